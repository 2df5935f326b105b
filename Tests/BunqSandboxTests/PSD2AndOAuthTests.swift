import BunqCrypto
import BunqSandbox
import Foundation
import TestThreads
import Testing
import TestSupport
import CurlHTTP

/// A pseudo eIDAS certificate made with openssl the way bunq's docs show.
struct PseudoEIDAS {
    let certificatePEM: String
    let key: RSAPrivateKey

    static func make(commonName: String = "My App PISP AISP", days: Int = 365) throws -> PseudoEIDAS {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("key.pem"),
                           "-out", dir.path("cert.pem"), "-days", "\(days)", "-nodes", "-subj", "/CN=\(commonName)/C=NL"])
        return PseudoEIDAS(certificatePEM: try dir.read("cert.pem"), key: try RSAPrivateKey(pem: dir.read("key.pem")))
    }
}

extension SandboxTestClient {
    func registerPSD2(_ eidas: PseudoEIDAS, signature: String? = nil) async throws -> SandboxTestClient.Reply {
        let signed = try signature ?? PSD2RegistrationSignature.sign(
            clientPublicKey: key.publicKey, installationToken: installationToken, certificateKey: eidas.key)
        return try await call("POST", "/v1/payment-service-provider-credential", [
            "client_payment_service_provider_certificate": eidas.certificatePEM,
            "client_payment_service_provider_certificate_chain": eidas.certificatePEM,
            "client_public_key_signature": signed,
        ], token: installationToken)
    }
}

@Suite(.ownThread) struct PSD2Tests {
    @Test func providerRegistersAndItsFirstSessionIsShort() async throws {
        let eidas = try PseudoEIDAS.make()
        // Limits off: two sessions a second apart test the first-session rule, not the session-server limit.
        try await BunqSandbox.test(SandboxConfiguration(sessionTimeout: 60, psd2FirstSessionTimeout: 1, rateLimits: false)) { client in
            try await client.install()
            let reply = try await client.registerPSD2(eidas)
            #expect(reply.status == 200, "\(reply.error ?? "")")
            let credential = try #require(reply.item("CredentialPasswordIp"))
            let tokenValue = try #require(credential["token_value"] as? String)
            #expect(tokenValue.count == 64 && credential["status"] as? String == "PENDING_FIRST_USE")

            let first = try await client.openSession(secret: tokenValue)
            #expect(first.userType == "UserPaymentServiceProvider")
            #expect(first.user["certificate_distinguished_name"] as? String == "CN=My App PISP AISP,C=NL")
            // The user object reports the usual timeout, yet the first session dies after its own.
            #expect(first.user["session_timeout"] as? Int == 60)
            let second = try await client.session(secret: tokenValue)
            try await Task.sleep(for: .milliseconds(1_300))
            #expect(try await client.call("GET", "/v1/user", token: first.token).status == 401)
            #expect(try await client.call("GET", "/v1/user", token: second.token).status == 200)
        }
    }

    @Test func registrationChecksSignatureRolesAndCertificate() async throws {
        let eidas = try PseudoEIDAS.make()
        let noRoles = try PseudoEIDAS.make(commonName: "My App")
        try await BunqSandbox.test { client in
            try await client.install()
            // Signed with the installation key instead of the certificate's key.
            let wrongKey = try PSD2RegistrationSignature.sign(clientPublicKey: client.key.publicKey,
                                                              installationToken: client.installationToken,
                                                              certificateKey: client.key)
            let forged = try await client.registerPSD2(eidas, signature: wrongKey)
            #expect(forged.status == 400 && forged.error == "The client public key signature is invalid.")
            let roles = try await client.registerPSD2(noRoles)
            #expect(roles.status == 400 && roles.error?.contains("AISP and/or PISP") == true)
            let garbage = try await client.registerPSD2(PseudoEIDAS(certificatePEM: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                                                    key: eidas.key), signature: "AAAA")
            #expect(garbage.status == 400 && garbage.error?.contains("certificate") == true)
            // The shared PSD2 vector's certificate expired in 2021.
            let expired = try await client.registerPSD2(PseudoEIDAS(certificatePEM: try SharedTestData.text("psd2-vector/psd2_cert.pem"),
                                                                    key: eidas.key), signature: "AAAA")
            #expect(expired.status == 400 && expired.error?.contains("expired") == true)
        }
    }
}

@Suite(.ownThread) struct OAuthTests {
    @Test func clientCallbacksAuthorizeExchangeAndUserApiKeySession() async throws {
        let eidas = try PseudoEIDAS.make()
        try await BunqSandbox.test { client in
            try await client.install()
            let registered = try await client.registerPSD2(eidas)
            let tokenValue = try #require(registered.item("CredentialPasswordIp")?["token_value"] as? String)
            let provider = try await client.openSession(secret: tokenValue)
            let providerId = try #require(provider.user["id"] as? Int)
            let base = "/v1/user/\(providerId)/oauth-client"

            let created = try await client.call("POST", base, ["status": "ACTIVE"], token: provider.token)
            let clientId = try #require(created.item("Id")?["id"] as? Int)
            let again = try await client.call("POST", base, [:], token: provider.token)
            #expect(again.status == 400, "one active OAuth client per user: list before creating")
            let callbackURL = "https://example.com/bunq/callback"
            let callback = try await client.call("POST", "\(base)/\(clientId)/callback-url", ["url": callbackURL], token: provider.token)
            let callbackId = try #require(callback.item("Id")?["id"] as? Int)
            let extra = try await client.call("POST", "\(base)/\(clientId)/callback-url", ["url": "https://example.com/other"],
                                              token: provider.token)
            let extraId = try #require(extra.item("Id")?["id"] as? Int)
            #expect(try await client.call("DELETE", "\(base)/\(clientId)/callback-url/\(extraId)", token: provider.token).status == 200)
            let listed = try await client.call("GET", "\(base)/\(clientId)/callback-url", token: provider.token)
            #expect(listed.items.map { $0.1["id"] as? Int } == [callbackId])

            let fetched = try await client.call("GET", "\(base)/\(clientId)", token: provider.token)
            let oauthClient = try #require(fetched.item("OauthClient"))
            let publicId = try #require(oauthClient["client_id"] as? String)
            let secret = try #require(oauthClient["secret"] as? String)
            #expect((oauthClient["callback_url"] as? [[String: Any]])?.first?["url"] as? String == callbackURL)
            #expect(try await client.call("GET", base, token: provider.token).items.count == 1)

            // The user who approves: a sandbox user chosen through the admin API.
            let personKey = try await client.sandboxUser()
            _ = try await client.admin("POST", "oauth/approve-as", ["api_key": personKey])

            func authorize(_ redirect: String) async throws -> SandboxTestClient.Reply {
                var components = URLComponents(string: client.base + "/auth")!
                components.queryItems = [.init(name: "response_type", value: "code"), .init(name: "client_id", value: publicId),
                                         .init(name: "redirect_uri", value: redirect), .init(name: "state", value: "st&ate/1")]
                let response = try await client.http.execute(.init(url: components.string!))
                return .init(status: response.status, headers: response.headers, body: response.body)
            }
            #expect(try await authorize(callbackURL + "/").status == 400, "redirect URIs match byte for byte")
            let approved = try await authorize(callbackURL)
            #expect(approved.status == 302)
            let locationHeader = try #require(approved.headers["Location"])
            let location = try #require(URLComponents(string: locationHeader))
            #expect(location.host == "example.com" && location.path == "/bunq/callback")
            let code = try #require(location.queryItems?.first { $0.name == "code" }?.value)
            #expect(location.queryItems?.first { $0.name == "state" }?.value == "st&ate/1")

            func exchange(_ code: String, form: Bool = false) async throws -> [String: Any] {
                var components = URLComponents()
                components.queryItems = [.init(name: "grant_type", value: "authorization_code"), .init(name: "code", value: code),
                                         .init(name: "redirect_uri", value: callbackURL), .init(name: "client_id", value: publicId),
                                         .init(name: "client_secret", value: secret)]
                let query = components.percentEncodedQuery!
                let request = form
                    ? HTTPRequestFactory.form(client.base + "/v1/token", query)
                    : .init(method: "POST", url: client.base + "/v1/token?" + query)
                let response = try await client.http.execute(request)
                return (try JSONSerialization.jsonObject(with: response.body) as? [String: Any]) ?? [:]
            }
            let token = try await exchange(code)
            let accessToken = try #require(token["access_token"] as? String)
            #expect(token["token_type"] as? String == "bearer" && token["state"] as? String == "st&ate/1")
            #expect(try await exchange(code)["error"] as? String == "invalid_grant", "a code is single-use")
            #expect(try await exchange("0000")["error"] as? String == "invalid_grant")
            let formLocation = try await authorize(callbackURL).headers["Location"] ?? ""
            let formCode = try #require(URLComponents(string: formLocation)?.queryItems?.first { $0.name == "code" }?.value)
            #expect(try await exchange(formCode, form: true)["access_token"] is String, "a form body is accepted too")

            // The access token works as an API key; its sessions belong to a UserApiKey.
            var userClient = try await SandboxTestClient.make(client.base)
            let grant = try await userClient.openSession(secret: accessToken)
            #expect(grant.userType == "UserApiKey")
            let requested = grant.user["requested_by_user"] as? [String: Any]
            let granted = grant.user["granted_by_user"] as? [String: Any]
            #expect((requested?["UserPaymentServiceProvider"] as? [String: Any])?["id"] as? Int == providerId)
            let grantingId = try #require((granted?["UserPerson"] as? [String: Any])?["id"] as? Int)
            let apiKeyUserId = try #require(grant.user["id"] as? Int)
            let accounts = try await userClient.call("GET", "/v1/user/\(apiKeyUserId)/monetary-account-bank", token: grant.token)
            #expect(accounts.item("MonetaryAccountBank")?["user_id"] as? Int == grantingId)
            await userClient.http.shutdown()

            // A cancelled client authorizes nobody.
            #expect(try await client.call("PUT", "\(base)/\(clientId)", ["status": "CANCELLED"], token: provider.token).status == 200)
            #expect(try await authorize(callbackURL).status == 400)
        }
    }
}

enum HTTPRequestFactory {
    static func form(_ url: String, _ body: String) -> CurlHTTP.HTTPRequest {
        .init(method: "POST", url: url, headers: ["Content-Type": "application/x-www-form-urlencoded"], body: Data(body.utf8))
    }
}
