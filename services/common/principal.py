"""Who is calling, as domain code sees it: a plain value, never gRPC metadata or a token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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


SYSTEM = Principal(SYSTEM_USER_ID, "system")
