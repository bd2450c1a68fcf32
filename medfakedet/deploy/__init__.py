"""Build the TorchServe archives and run TorchServe + nginx as background processes.

``python -m medfakedet.deploy archive|start|stop|status`` (see ``__main__``). One module per job:

* :mod:`~medfakedet.deploy.archive`: stage an artifact with the serving code, build the .mar;
* :mod:`~medfakedet.deploy.render`: TorchServe's config.properties and nginx.conf for a stack;
* :mod:`~medfakedet.deploy.ports`: free ports, and who holds a busy one;
* :mod:`~medfakedet.deploy.stack`: start, wait, status and stop of the processes;
* :mod:`~medfakedet.deploy.config`: the names, ports, paths and error they share;
* ``__main__``: the command line, and the URLs it prints for people.
"""

from medfakedet.deploy.archive import (
    archive_all,
    build_archive,
    check_model_config,
    find_artifact,
    serving_modules,
    stage_archive_files,
)
from medfakedet.deploy.config import (
    DEFAULT_PORTS,
    MODELS,
    REPO_ROOT,
    DeployError,
    StackConfig,
    find_tool,
)
from medfakedet.deploy.ports import can_bind, check_ports_free, free_port, free_ports, port_owner
from medfakedet.deploy.render import (
    read_properties,
    render_nginx_config,
    render_properties,
    render_template,
    render_torchserve_config,
)
from medfakedet.deploy.stack import (
    Stack,
    StackStatus,
    is_alive,
    models_ready,
    read_keys,
    stack_status,
    start,
    started_process,
    stop,
    wait_ready,
)

__all__ = [
    "DEFAULT_PORTS",
    "MODELS",
    "REPO_ROOT",
    "DeployError",
    "Stack",
    "StackConfig",
    "StackStatus",
    "archive_all",
    "build_archive",
    "check_model_config",
    "can_bind",
    "check_ports_free",
    "find_artifact",
    "find_tool",
    "free_port",
    "free_ports",
    "is_alive",
    "models_ready",
    "port_owner",
    "read_keys",
    "read_properties",
    "render_nginx_config",
    "render_properties",
    "render_template",
    "render_torchserve_config",
    "serving_modules",
    "stack_status",
    "stage_archive_files",
    "start",
    "started_process",
    "stop",
    "wait_ready",
]
