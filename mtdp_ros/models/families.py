"""Registration of the built-in families (imported by ``mtdp_ros.models``)."""

from .registry import ModelFamily, register_family


def _build_mlore(config):
    from .mlore import MLoREModel
    return MLoREModel(config)


def _build_taskdiffusion(config):
    from .taskdiffusion import TaskDiffusionModel
    return TaskDiffusionModel(config)


register_family(ModelFamily(
    'mlore', _build_mlore,
    description='MLoRE (CVPR 2024): ViT encoder, decoder of low-rank experts'))
register_family(ModelFamily(
    'taskdiffusion', _build_taskdiffusion, diffusion=True,
    description='TaskDiffusion (ICLR 2025): ViT encoder, joint cross-task diffusion decoder'))
register_family(ModelFamily(
    'taskdiffusion_mlore', _build_taskdiffusion, diffusion=True,
    description='TaskDiffusion with MLoRE blocks in its decoder'))
