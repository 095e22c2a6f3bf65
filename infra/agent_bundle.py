"""The VM agent as one metadata value: a zip of vm_agent/ and infra/serving.py, base64.

infra/serving.py goes with it because it is the serving contract (the environment and the
definition of ready) and imports nothing outside the standard library (a test runs the bundle
with `python3 -I -S`, without site-packages). The zip is byte-for-byte reproducible (fixed
timestamps, sorted names), so an unchanged agent is an unchanged metadata value and `pulumi up`
shows no diff for it.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def bundle_files() -> dict[str, bytes]:
    files = {f"vm_agent/{p.name}": p.read_bytes() for p in (ROOT / "vm_agent").glob("*.py")}
    files["infra/__init__.py"] = b""
    files["infra/serving.py"] = (ROOT / "infra" / "serving.py").read_bytes()
    return files


def agent_bundle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(bundle_files().items()):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def agent_bundle_b64() -> str:
    return base64.b64encode(agent_bundle()).decode()
