"""Start the mesh's real servers from wheels: PostgreSQL, Redis, Triton, Envoy and the services.

``Mesh`` is what ``clipmind up`` and the test fixtures use; the ``Embedded*`` classes start one part each.
"""

from services.launcher.envoy import EmbeddedEnvoy, EnvoyPorts, render_config
from services.launcher.mesh import Endpoints, Mesh, MeshConfig, MeshPorts
from services.launcher.postgres import EmbeddedPostgres
from services.launcher.process import LaunchError, free_port
from services.launcher.redis import EmbeddedRedis
from services.launcher.triton import EmbeddedTriton

__all__ = [
    "EmbeddedEnvoy",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedTriton",
    "Endpoints",
    "EnvoyPorts",
    "LaunchError",
    "Mesh",
    "MeshConfig",
    "MeshPorts",
    "free_port",
    "render_config",
]
