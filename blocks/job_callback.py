"""The backend's ``job-callback`` endpoint and the secret its signature uses."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from genjobs.settings import Settings


class JobCallbackEndpoint(Block):
    """Where callbacks go and how they are signed."""

    _block_type_name = "Job Callback Endpoint"
    _documentation_url = "https://github.com/genjobs/genjobs/blob/main/docs/runbook.md"  # type: ignore[assignment]
    _code_example = """
    ```python
    from blocks.job_callback import JobCallbackEndpoint

    block = JobCallbackEndpoint.load("BLOCK_NAME")
    ```
    """
    _description = "URL and HMAC secret of the job-callback function."

    url: str = Field(description="e.g. https://abcd.supabase.co/functions/v1/job-callback.")
    secret: SecretStr = Field(description="JOB_CALLBACK_SECRET: the HMAC-SHA256 key.")
    bearer: SecretStr | None = Field(
        default=None, description="Bearer token for the functions gateway (service-role JWT)."
    )

    def apply_to(self, settings: Settings) -> Settings:
        """``settings`` with this endpoint's URL, secret and (when set) bearer in force."""
        update: dict[str, object] = {"callback_url": self.url, "job_callback_secret": self.secret}
        if self.bearer is not None:
            update["callback_bearer"] = self.bearer
        return settings.model_copy(update=update)
