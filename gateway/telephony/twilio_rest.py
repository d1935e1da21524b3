"""Twilio REST call control: hang up or redirect a live call.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with HTTP Basic
``AccountSid:AuthToken`` (docs/protocols/twilio.md §1.6). A call that is already gone answers
HTTP 404 with code 20404: that counts as success (the call has ended either way).
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)


def _basic_auth(user: str, password: str) -> str:
    """RFC 7617 Basic credentials (built here: aiohttp's helpers move between versions)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class TwilioRestError(RuntimeError):
    """A REST call failed; the message never contains credentials."""


async def update_call(
    http: aiohttp.ClientSession,
    *,
    base_url: str,
    account_sid: str,
    auth_token: str,
    call_sid: str,
    form: dict[str, str],
    timeout: float = 5.0,
) -> bool:
    """Update a call; True if done, False if the call had already ended (404 / 20404).

    Raises :class:`TwilioRestError` for any other failure.
    """
    url = (
        f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
        f"/Calls/{quote(call_sid, safe='')}.json"
    )
    try:
        async with http.post(
            url,
            data=form,
            headers={"Authorization": _basic_auth(account_sid, auth_token)},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if response.status < 300:
                return True
            code: object = None
            try:
                body = await response.json(content_type=None)
                code = body.get("code") if isinstance(body, dict) else None
            except ValueError:
                pass
            if response.status == 404 or code == 20404:
                return False
            raise TwilioRestError(f"Twilio REST update returned HTTP {response.status} code {code}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TwilioRestError(f"Twilio REST update failed: {type(exc).__name__}") from None


async def hang_up(
    http: aiohttp.ClientSession, *, base_url: str, account_sid: str, auth_token: str, call_sid: str
) -> bool:
    """End an in-progress call (``Status=completed``); False if it had already ended."""
    return await update_call(
        http,
        base_url=base_url,
        account_sid=account_sid,
        auth_token=auth_token,
        call_sid=call_sid,
        form={"Status": "completed"},
    )
