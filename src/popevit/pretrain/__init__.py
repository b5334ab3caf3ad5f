"""Self-supervised pretraining on the training images (``popevit pretrain``): SimMIM masked-image modelling."""

from popevit.pretrain.simmim import SimMIM, patchify, random_mask

__all__ = ["SimMIM", "patchify", "random_mask"]
