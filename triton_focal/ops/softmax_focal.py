def softmax_focal_loss(input, target, *, gamma, alpha, weight, ignore_index, reduction, label_smoothing):
    raise NotImplementedError("the Triton softmax focal kernel is not built yet")
