"""The bootstrap admin token: generated into the data dir on first start.

Until the gateway issue brings real identities, this bearer token is the one credential
the server accepts outside the public allowlist.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from loguru import logger

from kblabs.datadir import write_secret_file

FILE_NAME = "admin.token"


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


class AdminToken:
    """Component: makes sure the token exists and holds it for the middleware."""

    name = "auth"

    def __init__(self, data_dir: Path, public_url: str) -> None:
        self.path = admin_token_path(data_dir)
        self.public_url = public_url
        self.value: str | None = None

    async def start(self) -> None:
        created = write_secret_file(self.path, secrets.token_urlsafe(32))
        self.value = self.path.read_text().strip()
        if not self.value:
            raise ValueError(f"{self.path} is empty; delete it to generate a new token")
        if created:
            logger.warning(
                "first start: admin token written to {} (mode 0600). Use it as "
                'curl -H "Authorization: Bearer $(cat {})" {}/api/v1/health',
                self.path,
                self.path,
                self.public_url,
            )

    async def stop(self) -> None:
        self.value = None
