"""ray_config.yaml passes Ray's own cluster-launcher validation (offline)."""

import yaml

from tests.conftest import REPO


def test_ray_config_is_a_valid_cluster_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "ray_config.yaml").read_text()))
    validate_config(config)  # raises on a schema error
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= 1 and workers["min_workers"] == 0
    assert any("install.sh --gpu" in c for c in config["worker_setup_commands"])


def test_a_broken_config_is_rejected():
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_config.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception):
        validate_config(prepare_config(config))
