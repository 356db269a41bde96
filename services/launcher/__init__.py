"""Start the mesh's real servers from wheels: PostgreSQL, Redis, Triton, Envoy and the services.

``Mesh`` is what ``clipmind up`` and the test fixtures use; the ``Embedded*`` classes start one part each;
``Supervisor`` restarts parts that exit (``Mesh.start_supervisor()``).
"""

from services.launcher.envoy import (
    EdgePolicy,
    EmbeddedEnvoy,
    EnvoyLimits,
    EnvoyPorts,
    render_config,
    validate_config,
)
from services.launcher.mesh import Endpoints, Mesh, MeshConfig, MeshPorts
from services.launcher.postgres import EmbeddedPostgres
from services.launcher.process import LaunchError, free_port
from services.launcher.redis import EmbeddedRedis
from services.launcher.supervisor import RestartPolicy, Supervisor
from services.launcher.triton import EmbeddedTriton

__all__ = [
    "EdgePolicy",
    "EmbeddedEnvoy",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedTriton",
    "Endpoints",
    "EnvoyLimits",
    "EnvoyPorts",
    "LaunchError",
    "Mesh",
    "MeshConfig",
    "MeshPorts",
    "RestartPolicy",
    "Supervisor",
    "free_port",
    "render_config",
    "validate_config",
]
