"""Identity's records: users and API keys as its database holds them, free of gRPC and SQL types."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

ROLES = ("user", "admin")  # "system" is the services' own identity: it never signs in


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    role: str
    display_name: str = ""
    password_hash: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    user_id: uuid.UUID
    key_prefix: str
    display_name: str = ""
    create_time: datetime | None = None
    last_use_time: datetime | None = None
