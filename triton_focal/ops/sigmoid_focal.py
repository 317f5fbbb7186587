def sigmoid_focal_loss(input, target, *, alpha, gamma, weight, ignore_index, reduction, normalizer):
    raise NotImplementedError("the Triton sigmoid focal kernel is not built yet")


def sigmoid_focal_loss_star(input, target, *, alpha, gamma, reduction):
    raise NotImplementedError("the Triton sigmoid focal kernel is not built yet")
