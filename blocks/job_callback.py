"""The backend's ``job-callback`` endpoint and the secret its signature uses."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


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
