"""Who is calling, as domain code sees it: a plain value, never gRPC metadata or a token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.common.names import user_name

# The services' own identity on internal calls and in workers.
SYSTEM_USER_ID = uuid.UUID(int=0)


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str  # "user", "admin" or "system"

    @property
    def is_admin(self) -> bool:
        """Admins and the system see and change every user's objects."""
        return self.role in ("admin", "system")

    @property
    def scope(self) -> uuid.UUID | None:
        """Whose objects this caller sees and changes: their own (their user id), or everyone's (None) for
        administrators and the system. Stores filter by it inside their queries."""
        return None if self.is_admin else self.user_id

    @property
    def name(self) -> str:
        """The caller as a resource name, ``users/{user}``."""
        return user_name(self.user_id)


SYSTEM = Principal(SYSTEM_USER_ID, "system")
