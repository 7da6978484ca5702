"""The API contract: generated code is current, buf lint is clean, API.md's names exist, every RPC declares its access rule."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from faceharmony.server import access
from faceharmony.v1 import errors_pb2, options_pb2

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT.parent / "shared" / "design" / "API.md"

# The names API.md makes the contract (services and RPCs); the acceptance checks rely on them.
CONTRACT = {
    "AccountService": [
        "JoinWaitlist",
        "RequestSignInCode",
        "SignIn",
        "SignOut",
        "GetAccount",
        "UpdateName",
        "InviteFriend",
        "AcceptInvitation",
        "DeleteAccount",
        "ReactivateAccount",
    ],
    "PhotoService": ["UploadPhoto", "ListPhotos", "DeletePhoto"],
    "ModelService": ["CreateModel", "GetModel", "ListModels", "WatchModel", "RetrainModel", "DeleteModel"],
    "OrderService": [
        "ListStyles",
        "CreateOrder",
        "GetOrder",
        "ListOrders",
        "WatchOrder",
        "ListGeneratedPhotos",
        "GetGeneratedPhotoPreview",
        "DownloadGeneratedPhoto",
        "RejectGeneratedPhoto",
        "DeleteGeneratedPhoto",
    ],
    "PurchaseService": ["RecordPurchase", "ListPurchases", "GetBalance"],
    "SupportService": ["CreateTicket", "ListTickets", "GetTicket", "ReplyToTicket"],
    "AdminService": [
        "ListWaitlist",
        "ApproveWaitlistEntry",
        "ListPendingDeletionModels",
        "RestoreModel",
        "GetAuditLog",
    ],
}


def test_generated_code_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_is_clean():
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        if os.environ.get("CI"):
            pytest.fail("buf is not installed (make dev-tools)")
        pytest.skip("buf not installed; run `make dev-tools`")
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_contract_name_exists():
    services = {svc.name: svc for svc in access.service_descriptors()}
    assert set(CONTRACT) == set(services)
    for service, rpcs in CONTRACT.items():
        have = {m.name for m in services[service].methods}
        assert set(rpcs) <= have, (service, set(rpcs) - have)
        assert services[service].full_name == f"faceharmony.v1.{service}"


def test_api_md_reasons_are_in_the_error_enum():
    if not API_MD.exists():
        pytest.skip("shared/design/API.md not beside the checkout")
    named = set(re.findall(r"`([A-Z][A-Z_]+[A-Z])`", API_MD.read_text()))
    reasons = {n.removeprefix("ERROR_REASON_") for n in errors_pb2.ErrorReason.keys()}
    statuses = {
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNKNOWN",
        "INTERNAL",
        "QUEUED",
        "TRAINING",
        "READY",
        "FAILED",
        "PENDING_DELETION",
    }
    assert named - statuses <= reasons, named - statuses - reasons


def test_every_rpc_declares_an_access_rule():
    policy = access.build_policy()
    total = sum(len(svc.methods) for svc in access.service_descriptors())
    assert len(policy) == total
    assert options_pb2.ACCESS_UNSPECIFIED not in policy.values()
    # spot-check the rules that matter most
    assert policy["/faceharmony.v1.AccountService/SignIn"] == access.PUBLIC
    assert policy["/faceharmony.v1.AccountService/ReactivateAccount"] == access.USER_OR_DEACTIVATED
    assert policy["/faceharmony.v1.AdminService/ApproveWaitlistEntry"] == access.STAFF
    assert policy["/faceharmony.v1.AdminService/GetAuditLog"] == access.ADMIN
    assert access.rule_for(policy, "/faceharmony.v1.Nope/Nothing") is None


def test_no_rpc_changes_an_email():
    """P3: the email is the login and cannot be changed; no request message of a user RPC writes one."""
    for svc in access.service_descriptors():
        for method in svc.methods:
            fields = {f.name for f in method.input_type.fields}
            if "email" in fields:
                assert method.name in {"JoinWaitlist", "RequestSignInCode", "SignIn", "InviteFriend"}, method.full_name


def test_installing_puts_no_bare_module_on_the_path(tmp_path):
    """Only the faceharmony namespace is importable from the installed project, never a bare `server` or `clients`."""
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps({n: u.find_spec(n) is not None for n in "
        "('server', 'clients', 'trainer', 'core', 'faceharmony.server', 'faceharmony.clients', 'faceharmony.v1')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = __import__("json").loads(out.stdout)
    assert found == {
        "server": False,
        "clients": False,
        "trainer": False,
        "core": False,
        "faceharmony.server": True,
        "faceharmony.clients": True,
        "faceharmony.v1": True,
    }
