"""ms-rcnn's model zoo: the project's YAML and LazyConfig configs, shipped inside the package
(as `detectron2.model_zoo` ships Detectron2's), found by name from any folder.

    from ms_rcnn import model_zoo
    path = model_zoo.get_config_file("demo/ms_rcnn_R_18_demo.yaml")
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yaml")

Every command's `--config-file` takes a path or such a name (`resolve_config_file`).
`get_detectron2_config` loads Detectron2's own recipes (its model zoo's, and its projects' such
as ViTDet from a checkout) for the LazyConfigs that build on them.
"""

from .model_zoo import (
    ConfigNotFoundError,
    configs_root,
    get_config,
    get_config_file,
    list_configs,
    merge_config_file,
    resolve_config_file,
    zoo_config_name,
)
from .upstream import (
    Detectron2FeatureMissing,
    detectron2_checkout,
    get_detectron2_config,
    get_detectron2_config_file,
)

__all__ = [
    "ConfigNotFoundError",
    "Detectron2FeatureMissing",
    "detectron2_checkout",
    "get_detectron2_config",
    "get_detectron2_config_file",
    "configs_root",
    "get_config",
    "get_config_file",
    "list_configs",
    "merge_config_file",
    "resolve_config_file",
    "zoo_config_name",
]
