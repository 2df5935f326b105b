"""Drives bunq-sandbox with bunq's official Python SDK (bunq-sdk 1.28.0), as a bunq user would.

Usage: python_sdk_compat.py PATH/TO/bunq-sandbox
Prints one line per check and closes with 'sdk-compat: N passed, N failed'; exits non-zero on any failure.
Every key and certificate is made here, at test time.
"""
import json
from decimal import Decimal
import os
import subprocess
import sys
import tempfile
import traceback
import urllib.parse

import requests
from bunq.sdk.context.api_context import ApiContext
from bunq.sdk.context.api_environment_type import ApiEnvironmentType
from bunq.sdk.context.bunq_context import BunqContext
from bunq.sdk.exception.bunq_exception import BunqException
from bunq.sdk.model.generated.endpoint import (EventApiObject, MonetaryAccountApiObject, MonetaryAccountBankApiObject,
                                               MonetaryAccountJointApiObject, MonetaryAccountSavingsApiObject,
                                               OauthCallbackUrlApiObject, OauthClientApiObject, PaymentApiObject,
                                               RequestInquiryApiObject, UserApiObject)
from bunq.sdk.model.generated.object_ import AmountObject, PointerObject

results = []


def check(name):
    def run(function):
        try:
            function()
            results.append((name, None))
            print(f"PASS {name}", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, then the run goes on
            results.append((name, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return function
    return run


def start_sandbox(path):
    """Starts bunq-sandbox on a free port and points the SDK's sandbox environment at it (the SDK has no setting
    for its base URL)."""
    # Limits off: this test is about the SDK's wire format, and bunq's SDK opens a session on every
    # ApiContext.create, several per flow; the daemon's tests are the ones that run under bunq's limits.
    sandbox = subprocess.Popen([path, "--port", "0", "--rate-limits", "off"], stdout=subprocess.PIPE, text=True)
    first = sandbox.stdout.readline().strip()
    if not first.startswith("listening on http://127.0.0.1:"):
        sandbox.kill()
        raise AssertionError(f"bunq-sandbox did not start: {first!r}")
    base = first.removeprefix("listening on ")
    ApiEnvironmentType.SANDBOX._uri_base = base + "/v1/"
    return sandbox, base


def stop_sandbox(sandbox):
    sandbox.terminate()
    sandbox.wait(timeout=10)


def main():
    sandbox, base = start_sandbox(sys.argv[1])
    try:
        run_checks(base)
    finally:
        stop_sandbox(sandbox)
    fresh_sandbox_checks(sys.argv[1], count=12)
    failed = sum(1 for _, error in results if error)
    print(f"sdk-compat: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def admin(base, method, path, body=None):
    response = requests.request(method, base + "/_sandbox/" + path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def run_checks(base):
    env = ApiEnvironmentType.SANDBOX
    state = {}

    @check("sandbox user: ApiContext.create with its API key")
    def _():
        api_key = requests.post(base + "/v1/sandbox-user-person").json()["Response"][0]["ApiKey"]["api_key"]
        assert api_key.startswith("sandbox_")
        context = ApiContext.create(env, api_key, "bunq-sessiond sdk-compat")
        assert context.session_context.token and len(context.session_context.token) == 64
        assert context.session_context.user_id > 0
        state["api_key"], state["person"] = api_key, context

    @check("BunqContext.load_api_context lists the active MonetaryAccountBank")
    def _():
        BunqContext.load_api_context(state["person"])
        account = BunqContext.user_context().primary_monetary_account
        assert account.status == "ACTIVE" and account.id_ > 0
        users = UserApiObject.list().value
        assert users[0].get_referenced_object().id_ == state["person"].session_context.user_id
        assert MonetaryAccountBankApiObject.list().value[0].id_ == account.id_

    @check("reset_session opens a new session that works")
    def _():
        context = state["person"]
        before = context.session_context.token
        created = admin(base, "GET", "stats")["sessions_created"]
        context.reset_session()
        assert context.session_context.token != before
        assert admin(base, "GET", "stats")["sessions_created"] == created + 1
        BunqContext.load_api_context(context)
        assert MonetaryAccountBankApiObject.list().value[0].status == "ACTIVE"

    @check("MonetaryAccount lists every account type in its wrapper, paged with count and older_id")
    def _():
        BunqContext.load_api_context(state["person"])
        admin(base, "POST", "accounts", {"api_key": state["api_key"], "type": "MonetaryAccountSavings", "count": 2})
        admin(base, "POST", "accounts", {"api_key": state["api_key"], "type": "MonetaryAccountJoint", "count": 1})
        def referenced(account):
            """The one typed account the SDK's MonetaryAccount wrapper holds."""
            held = [getattr(account, name) for name in ("MonetaryAccountBank", "MonetaryAccountSavings", "MonetaryAccountJoint")
                    if getattr(account, name, None) is not None]
            assert len(held) == 1, vars(account)
            return held[0]

        first = MonetaryAccountApiObject.list(params={"count": "2"})
        assert len(first.value) == 2, first.value
        kinds = {type(referenced(account)) for account in first.value}
        assert kinds <= {MonetaryAccountBankApiObject, MonetaryAccountSavingsApiObject, MonetaryAccountJointApiObject}
        assert first.pagination.has_previous_page() and not first.pagination.has_next_page_assured()
        second = MonetaryAccountApiObject.list(params=first.pagination.url_params_previous_page)
        ids = [referenced(account).id_ for account in first.value + second.value]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), ids
        every = {type(referenced(account)) for account in MonetaryAccountApiObject.list(params={"count": "200"}).value}
        assert {MonetaryAccountSavingsApiObject, MonetaryAccountJointApiObject} <= every, every

    @check("money through the SDK: sugardaddy tops up, a Payment moves the balance, lists and events read back")
    def _():
        BunqContext.load_api_context(state["person"])
        account_id = BunqContext.user_context().primary_monetary_account.id_

        def balance():
            return Decimal(MonetaryAccountBankApiObject.get(account_id).value.balance.value)

        before = balance()
        RequestInquiryApiObject.create(AmountObject("100.00", "EUR"),
                                       PointerObject("EMAIL", "sugardaddy@bunq.com", "Sugar Daddy"), "top up", False)
        payment_id = PaymentApiObject.create(AmountObject("12.34", "EUR"),
                                             PointerObject("IBAN", "NL91ABNA0417164300", "Elsewhere B.V."),
                                             "sdk payment").value
        payment = PaymentApiObject.get(payment_id).value
        assert payment.amount.value == "-12.34" and payment.description == "sdk payment", vars(payment)
        listed = [p.description for p in PaymentApiObject.list(params={"count": "10"}).value]
        assert listed[:2] == ["sdk payment", "top up"], listed
        assert balance() - before == Decimal("87.66"), balance() - before
        newest = EventApiObject.list().value[0].object_.get_referenced_object()
        assert type(newest).__name__.startswith("Payment"), type(newest)

    @check("the SDK's response-signature check rejects a reply signed wrongly")
    def _():
        admin(base, "POST", "faults", {"endpoint": "GET /v1/user/{userID}/monetary-account-bank", "bad_signature": True, "count": 1})
        try:
            MonetaryAccountBankApiObject.list()
            raise AssertionError("the SDK accepted a bad server signature")
        except BunqException as error:
            assert "Could not validate response signature" in str(error), error
        assert MonetaryAccountBankApiObject.list().value  # the next, correctly signed reply passes again

    @check("PSD2: ApiContext.create_for_psd2 with an openssl pseudo-eIDAS certificate")
    def _():
        directory = tempfile.mkdtemp()
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", key, "-out", cert, "-days", "365",
                        "-nodes", "-subj", "/CN=SDK Compat PISP AISP/C=NL"], check=True, capture_output=True)
        certificate, private_key = open(cert).read(), open(key).read()
        context = ApiContext.create_for_psd2(env, certificate, private_key, [certificate], "sdk-compat psd2")
        assert context.session_context.token
        BunqContext.load_api_context(context)
        user = UserApiObject.list().value[0].get_referenced_object()
        assert type(user).__name__ == "UserPaymentServiceProviderApiObject", type(user)
        assert "SDK Compat PISP AISP" in user.certificate_distinguished_name
        state["psd2"] = context

    @check("OAuth client and callback URL through the SDK's endpoint classes")
    def _():
        BunqContext.load_api_context(state["psd2"])
        client_id = OauthClientApiObject.create().value
        callback = "https://example.com/bunq/callback"
        callback_id = OauthCallbackUrlApiObject.create(client_id, callback).value
        client = OauthClientApiObject.get(client_id).value
        assert client.status == "ACTIVE" and len(client.client_id) == 64 and len(client.secret) == 64
        assert [c.url for c in client.callback_url] == [callback]
        assert callback_id > 0
        # The SDK models a callback URL by its url only.
        assert [c.url for c in OauthCallbackUrlApiObject.list(client_id).value] == [callback]
        assert [c.id_ for c in OauthClientApiObject.list().value] == [client_id]
        state["oauth"] = (client, callback)

    @check("OAuth grant: /auth, code exchange, then ApiContext.create with the access token (UserApiKey)")
    def _():
        client, callback = state["oauth"]
        admin(base, "POST", "oauth/approve-as", {"api_key": state["api_key"]})
        authorize = base + "/auth?" + urllib.parse.urlencode({"response_type": "code", "client_id": client.client_id,
                                                              "redirect_uri": callback, "state": "xyz"})
        redirect = requests.get(authorize, allow_redirects=False)
        assert redirect.status_code == 302, redirect.text
        query = urllib.parse.parse_qs(urllib.parse.urlparse(redirect.headers["Location"]).query)
        assert query["state"] == ["xyz"]
        token = requests.post(base + "/v1/token?" + urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": callback,
            "client_id": client.client_id, "client_secret": client.secret})).json()
        assert token["token_type"] == "bearer" and len(token["access_token"]) == 64, token
        context = ApiContext.create(env, token["access_token"], "sdk-compat oauth user")
        BunqContext.load_api_context(context)
        user = UserApiObject.list().value[0].get_referenced_object()
        assert type(user).__name__ == "UserApiKeyApiObject", type(user)
        granted = user.granted_by_user.get_referenced_object()
        assert granted.id_ == state["person"].session_context.user_id
        # The granting user's account, seen through the grant.
        assert BunqContext.user_context().primary_monetary_account.status == "ACTIVE"

    @check("a revoked API key makes the next session-server fail with bunq's credentials error")
    def _():
        admin(base, "POST", "revoke", {"secret": state["api_key"]})
        try:
            state["person"].reset_session()
            raise AssertionError("session-server accepted a revoked key")
        except Exception as error:  # the SDK raises BadRequestException
            assert "User credentials are incorrect" in str(error), error


def fresh_sandbox_checks(path, count):
    # The first public-key decode in a new process is its own code path in OpenSSL 3.0; one in three of these
    # once failed with "DECODER routines::unsupported".
    @check(f"ApiContext.create as the first call to each of {count} freshly started sandboxes")
    def _():
        for _ in range(count):
            sandbox, base = start_sandbox(path)
            try:
                api_key = requests.post(base + "/v1/sandbox-user-person").json()["Response"][0]["ApiKey"]["api_key"]
                context = ApiContext.create(ApiEnvironmentType.SANDBOX, api_key, "bunq-sessiond sdk-compat fresh")
                assert context.session_context.token and context.session_context.user_id > 0
            finally:
                stop_sandbox(sandbox)


if __name__ == "__main__":
    sys.exit(main())
