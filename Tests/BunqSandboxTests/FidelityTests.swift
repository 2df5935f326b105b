import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import TestThreads
import Testing

/// The emulator holds clients to what bunq holds them to: IP binding, request ids, headers, killed sessions,
/// credential time limits, lists. Limits off unless a test is about them: these tests make many calls a second.
/// Serialized: fourteen emulators starting at once (three RSA keys each) would crowd the test process's two
/// cooperative threads that timing-sensitive suites share.
@Suite(.serialized, .ownThread) struct FidelityTests {
    // MARK: Killed and revoked sessions

    // Limits off in this suite: it tests what bunq answers, call by call; the limits have their own tests
    // (LimitsAndFaultsTests) and the daemon's tests run under them.
    @Test func killedAndRevokedSessionsDieAtOnce() async throws {
        try await BunqSandbox.test(SandboxConfiguration(rateLimits: false, deadSessionAnswer: .status401)) { client in
            let apiKey = try await client.sandboxUser()
            let first = try await client.openSession(secret: apiKey)
            let second = try await client.session(secret: apiKey)
            let killed = try await client.admin("POST", "sessions/kill", ["token": first.token])
            #expect(killed["killed"] as? Int == 1)
            #expect(try await client.call("GET", "/v1/user", token: first.token).status == 401)
            #expect(try await client.call("GET", "/v1/user", token: second.token).status == 200, "only that token")

            let userId = try #require(second.user["id"] as? Int)
            #expect(try await client.admin("POST", "sessions/kill", ["user_id": userId])["killed"] as? Int == 1)
            #expect(try await client.call("GET", "/v1/user", token: second.token).status == 401)

            let third = try await client.session(secret: apiKey)
            let revoked = try await client.admin("POST", "revoke", ["secret": apiKey])
            #expect(revoked["sessions_ended"] as? Int == 1, "revoking a key ends its live sessions")
            #expect(try await client.call("GET", "/v1/user", token: third.token).status == 401)

            let other = try await client.openSession(secret: try await client.sandboxUser())
            #expect(try await client.admin("POST", "sessions/kill", ["all": true])["killed"] as? Int == 1)
            #expect(try await client.call("GET", "/v1/user", token: other.token).status == 401)
            #expect(try await client.admin("GET", "stats")["sessions_killed"] as? Int == 4)
        }
    }

    // MARK: IP binding

    @Test func permittedIPsAreValidated() async throws {
        try await BunqSandbox.test { client in
            try await client.install()
            let apiKey = try await client.sandboxUser()
            for bad: Any in ["1.2.3.4", ["not-an-ip"], [] as [String], [12], ["1.2.3.4", "300.1.1.1"]] {
                let reply = try await client.call("POST", "/v1/device-server",
                                                  ["description": "d", "secret": apiKey, "permitted_ips": bad],
                                                  token: client.installationToken)
                #expect(reply.status == 400 && reply.error?.contains("permitted_ips") == true, "\(bad): \(reply.error ?? "")")
            }
            for good: Any in [["*"], ["127.0.0.1", "*"], ["::1"], NSNull()] {
                let reply = try await client.call("POST", "/v1/device-server",
                                                  ["description": "d", "secret": apiKey, "permitted_ips": good],
                                                  token: client.installationToken)
                #expect(reply.status == 200, "\(good): \(reply.error ?? "")")
            }
        }
    }

    @Test func devicesBindSessionServerAndSessionsToAddresses() async throws {
        try await BunqSandbox.test { client in
            try await client.install()
            let elsewhere = try client.from("127.0.0.2")
            // No permitted_ips: the device binds to the address it was registered from.
            let apiKey = try await client.sandboxUser()
            let device = try await client.call("POST", "/v1/device-server", ["description": "d", "secret": apiKey],
                                               token: client.installationToken)
            #expect(device.status == 200)
            let refused = try await elsewhere.call("POST", "/v1/session-server", ["secret": apiKey],
                                                   token: client.installationToken)
            #expect(refused.status == 400 && refused.error == "User credentials are incorrect. Incorrect API key or IP address.")
            let session = try await client.session(secret: apiKey)
            // Every request made with that session is bound too.
            #expect(try await client.call("GET", "/v1/user", token: session.token).status == 200)
            let moved = try await elsewhere.call("GET", "/v1/user", token: session.token)
            #expect(moved.status == 400 && moved.error?.hasPrefix("User credentials are incorrect") == true)

            // A listed address, and "*".
            let listed = try await client.sandboxUser()
            #expect(try await client.call("POST", "/v1/device-server", ["description": "d", "secret": listed,
                                                                        "permitted_ips": ["127.0.0.2"]],
                                          token: client.installationToken).status == 200)
            #expect(try await client.call("POST", "/v1/session-server", ["secret": listed],
                                          token: client.installationToken).status == 400)
            #expect(try await elsewhere.call("POST", "/v1/session-server", ["secret": listed],
                                             token: client.installationToken).status == 200)
            let wildcard = try await client.openSession(secret: try await client.sandboxUser())
            #expect(try await elsewhere.call("GET", "/v1/user", token: wildcard.token).status == 200)

            // GET /v1/device-server shows the address each device was registered from.
            let devices = try await client.call("GET", "/v1/device-server", token: session.token)
            #expect(devices.items.map(\.0) == ["DeviceServer"])
            #expect(devices.items.first?.1["ip"] as? String == "127.0.0.1")
            await elsewhere.http.shutdown()
        }
    }

    @Test func rateLimitsAreKeyedByTheCallersAddress() async throws {
        try await BunqSandbox.test(SandboxConfiguration(rateLimits: true)) { client in
            let apiKey = try await client.sandboxUser()
            _ = try await client.openSession(secret: apiKey)
            for address in ["127.0.0.2", "127.0.0.3"] {
                let other = try client.from(address)
                let reply = try await other.call("POST", "/v1/session-server", ["secret": apiKey],
                                                 token: client.installationToken)
                await other.http.shutdown()
                #expect(reply.status == 200, "\(address) is another IP with its own budget: \(reply.error ?? "")")
            }
            let again = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(again.status == 429, "127.0.0.1 spent its one call per 30 s")
        }
    }

    // MARK: Request ids and headers

    @Test func requestIdsCannotBeReused() async throws {
        try await BunqSandbox.test { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            let id = UUID().uuidString
            #expect(try await client.call("GET", "/v1/user", token: session.token, requestId: id).status == 200)
            let reused = try await client.call("GET", "/v1/user", token: session.token, requestId: id)
            #expect(reused.status == 400 && reused.error?.contains("X-Bunq-Client-Request-Id") == true)
            #expect(try await client.admin("GET", "stats")["request_ids_rejected"] as? Int == 1)
            // Another installation has its own ids.
            var other = try await SandboxTestClient.make(client.base)
            other.installationToken = ""
            let second = try await other.openSession(secret: try await other.sandboxUser())
            #expect(try await other.call("GET", "/v1/user", token: second.token, requestId: id).status == 200)
            await other.http.shutdown()
        }
        var lenient = SandboxConfiguration(rateLimits: false)
        lenient.allowRequestIdReuse = true
        try await BunqSandbox.test(lenient) { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            for _ in 0..<2 { #expect(try await client.call("GET", "/v1/user", token: session.token, requestId: "same").status == 200) }
        }
    }

    @Test func userAgentAndCacheControlAreRequired() async throws {
        try await BunqSandbox.test { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            let noAgent = try await client.call("GET", "/v1/user", token: session.token, omitting: ["User-Agent"])
            #expect(noAgent.status == 400 && noAgent.error == "The header User-Agent is required.")
            let noCache = try await client.call("GET", "/v1/user", token: session.token, omitting: ["Cache-Control"])
            #expect(noCache.status == 400 && noCache.error == "The header Cache-Control is required.")
            // Unsigned calls need no Cache-Control (the swagger: "required for all signed requests").
            #expect(try await client.call("POST", "/v1/sandbox-user-person", omitting: ["Cache-Control"]).status == 200)
        }
        var lenient = SandboxConfiguration(rateLimits: false)
        lenient.lenientHeaders = true
        try await BunqSandbox.test(lenient) { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            #expect(try await client.call("GET", "/v1/user", token: session.token,
                                          omitting: ["User-Agent", "Cache-Control"]).status == 200)
        }
    }

    // MARK: Realistic failures

    @Test func rawAndPresetFaults() async throws {
        try await BunqSandbox.test { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            for (preset, status, contentType, error) in [
                ("html_502", 502, "text/html", nil), ("empty_503", 503, nil, nil),
                ("user_error_490", 490, "application/json", "Most likely a parameter is missing or invalid."),
                ("maintenance_491", 491, "application/json", "bunq is in maintenance mode."),
            ] as [(String, Int, String?, String?)] {
                _ = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user", "preset": preset, "count": 1])
                let reply = try await client.call("GET", "/v1/user", token: session.token)
                #expect(reply.status == status, "\(preset)")
                #expect(reply.headers["Content-Type"] == contentType, "\(preset)")
                #expect(reply.headers["X-Bunq-Server-Signature"] == nil, "\(preset): a proxy's reply is not signed")
                #expect(reply.error == error, "\(preset)")
                if preset == "html_502" { #expect(String(decoding: reply.body, as: UTF8.self).contains("<h1>502 Bad Gateway</h1>")) }
                if preset == "empty_503" { #expect(reply.body.isEmpty) }
            }
            _ = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user", "status": 500, "body": "oops",
                                                          "content_type": "text/plain", "count": 1])
            let raw = try await client.call("GET", "/v1/user", token: session.token)
            #expect(raw.status == 500 && String(decoding: raw.body, as: UTF8.self) == "oops")
            let unknown = try await client.call("POST", "/_sandbox/faults", ["endpoint": "*", "preset": "nope"], verify: false)
            #expect(unknown.status == 400 && unknown.error?.contains("html_502") == true)
        }
    }

    // MARK: Session lifetime

    @Test func sessionsExtendByUseOnlyWhenAsked() async throws {
        var extending = SandboxConfiguration(sessionTimeout: 2, rateLimits: false)
        extending.sessionExtensionSeconds = 4
        for configuration in [extending, SandboxConfiguration(sessionTimeout: 2, rateLimits: false)] {
            try await BunqSandbox.test(configuration) { client in
                let session = try await client.openSession(secret: try await client.sandboxUser())
                try await Task.sleep(for: .milliseconds(1_000))
                #expect(try await client.call("GET", "/v1/user", token: session.token).status == 200)
                try await Task.sleep(for: .milliseconds(1_500))
                let later = try await client.call("GET", "/v1/user", token: session.token)
                let extends = configuration.sessionExtensionSeconds != nil
                #expect(later.status == (extends ? 200 : 401) || (!extends && later.status == 403),
                        "2.5 s after creation: extended by the request in its last 30 s, or gone")
            }
        }
    }

    @Test func eachUserHasItsOwnSessionTimeout() async throws {
        try await BunqSandbox.test { client in
            let short = try await client.sandboxUser()
            let set = try await client.admin("POST", "users/session-timeout", ["api_key": short, "session_timeout": 1])
            #expect(set["session_timeout"] as? Int == 1)
            let brief = try await client.openSession(secret: short)
            let normal = try await client.openSession(secret: try await client.sandboxUser())
            #expect(brief.user["session_timeout"] as? Int == 1)
            #expect(normal.user["session_timeout"] as? Int == 604_800)
            try await Task.sleep(for: .milliseconds(1_300))
            #expect(try await client.call("GET", "/v1/user", token: brief.token).status != 200)
            #expect(try await client.call("GET", "/v1/user", token: normal.token).status == 200)
        }
    }

    @Test func unboundKeysExpireAfterTheBindWindow() async throws {
        var configuration = SandboxConfiguration(rateLimits: false)
        configuration.apiKeyBindWindow = 1
        try await BunqSandbox.test(configuration) { client in
            try await client.install()
            let bound = try await client.sandboxUser()
            let late = try await client.sandboxUser()
            _ = try await client.openSession(secret: bound)
            try await Task.sleep(for: .milliseconds(1_300))
            let reply = try await client.call("POST", "/v1/device-server", ["description": "d", "secret": late, "permitted_ips": ["*"]],
                                              token: client.installationToken)
            #expect(reply.status == 400 && reply.error?.hasPrefix("User credentials are incorrect") == true)
            // A key bound in time stays usable, for new sessions and new devices.
            #expect(try await client.call("POST", "/v1/session-server", ["secret": bound], token: client.installationToken).status == 200)
            #expect(try await client.call("POST", "/v1/device-server", ["description": "d2", "secret": bound, "permitted_ips": ["*"]],
                                          token: client.installationToken).status == 200)
        }
    }

    @Test func psd2CredentialBecomesActiveOnFirstUse() async throws {
        let eidas = try PseudoEIDAS.make()
        try await BunqSandbox.test { client in
            try await client.install()
            let created = try #require(try await client.registerPSD2(eidas).item("CredentialPasswordIp"))
            let id = try #require(created["id"] as? Int)
            #expect(created["status"] as? String == "PENDING_FIRST_USE" && created["expiry_time"] is String)
            let session = try await client.openSession(secret: try #require(created["token_value"] as? String))
            let read = try await client.call("GET", "/v1/payment-service-provider-credential/\(id)", token: session.token)
            let active = try #require(read.item("CredentialPasswordIp"))
            #expect(active["status"] as? String == "ACTIVE")
            #expect(active["token_value"] is NSNull && active["expiry_time"] is NSNull)
            #expect((active["permitted_device"] as? [String: Any])?["ip"] as? String == "127.0.0.1")
            #expect(try await client.call("GET", "/v1/payment-service-provider-credential/\(id + 1)", token: session.token).status == 404)
        }
    }

    // MARK: Accounts, lists and the calls clients make to look around

    @Test func accountsOfEveryKindAndPagination() async throws {
        try await BunqSandbox.test { client in
            let apiKey = try await client.sandboxUser()
            let session = try await client.openSession(secret: apiKey)
            let userId = try #require(session.user["id"] as? Int)
            let base = "/v1/user/\(userId)/monetary-account"
            _ = try await client.admin("POST", "accounts", ["api_key": apiKey, "type": "MonetaryAccountSavings", "count": 2])
            _ = try await client.admin("POST", "accounts", ["api_key": apiKey, "type": "MonetaryAccountJoint", "count": 1])
            let added = try await client.admin("POST", "accounts", ["api_key": apiKey, "count": 20])
            let all = try await client.call("GET", base + "?count=200", token: session.token)
            let kinds = Set(all.items.map(\.0))
            #expect(kinds.isSuperset(of: ["MonetaryAccountBank", "MonetaryAccountSavings", "MonetaryAccountJoint"]))
            let ids = all.items.compactMap { $0.1["id"] as? Int }
            #expect(ids == ids.sorted(by: >), "newest first")
            #expect(ids.count >= 24)

            // Default count 10; older_url pages back, newer_url and future_url as bunq builds them.
            let first = try await client.call("GET", base, token: session.token)
            #expect(first.items.count == 10)
            let firstPagination = try #require(first.json["Pagination"] as? [String: Any])
            #expect(firstPagination["newer_url"] is NSNull)
            #expect(firstPagination["future_url"] as? String == "\(base)?newer_id=\(ids[0])")
            let older = try #require(firstPagination["older_url"] as? String)
            #expect(older == "\(base)?older_id=\(ids[9])")
            let second = try await client.call("GET", older, token: session.token)
            #expect(second.items.compactMap { $0.1["id"] as? Int } == Array(ids[10..<20]))
            let secondPagination = try #require(second.json["Pagination"] as? [String: Any])
            #expect(secondPagination["newer_url"] as? String == "\(base)?newer_id=\(ids[10])")
            #expect(secondPagination["future_url"] is NSNull)
            // newer_id lists the items just newer than it; count is repeated in the URLs.
            let newer = try await client.call("GET", "\(base)?count=3&newer_id=\(ids[10])", token: session.token)
            #expect(newer.items.compactMap { $0.1["id"] as? Int } == Array(ids[7..<10]))
            let newerPagination = try #require(newer.json["Pagination"] as? [String: Any])
            #expect(newerPagination["older_url"] as? String == "\(base)?count=3&older_id=\(ids[9])")
            // A type's own list holds only that type.
            let bank = try await client.call("GET", "/v1/user/\(userId)/monetary-account-bank?count=200", token: session.token)
            #expect(Set(bank.items.map(\.0)) == ["MonetaryAccountBank"])
            #expect(bank.items.count == 1 + (added["ids"] as? [Int] ?? []).count)
            for count in ["0", "201", "x"] {
                let reply = try await client.call("GET", "\(base)?count=\(count)", token: session.token)
                #expect(reply.status == 400 && reply.error?.contains("count") == true, "count=\(count)")
            }
            // One account by id, under the generic path and its type's; another type's path does not find it.
            let savingsId = try #require(all.items.first { $0.0 == "MonetaryAccountSavings" }?.1["id"] as? Int)
            #expect(try await client.call("GET", "\(base)/\(savingsId)", token: session.token).items.map(\.0) == ["MonetaryAccountSavings"])
            #expect(try await client.call("GET", "/v1/user/\(userId)/monetary-account-savings/\(savingsId)",
                                          token: session.token).status == 200)
            #expect(try await client.call("GET", "/v1/user/\(userId)/monetary-account-bank/\(savingsId)",
                                          token: session.token).status == 404)
        }
    }

    @Test func someSandboxUsersHaveSavingsAndJointAccounts() async throws {
        try await BunqSandbox.test { client in
            var kinds: Set<String> = []
            for _ in 0..<15 {
                let session = try await client.openSession(secret: try await client.sandboxUser())
                let userId = try #require(session.user["id"] as? Int)
                let list = try await client.call("GET", "/v1/user/\(userId)/monetary-account", token: session.token)
                #expect(list.items.contains { $0.0 == "MonetaryAccountBank" }, "everyone has a current account")
                kinds.formUnion(list.items.map(\.0))
            }
            #expect(kinds == ["MonetaryAccountBank", "MonetaryAccountSavings", "MonetaryAccountJoint"])
        }
    }

    @Test func installationDeviceAndCallbackCalls() async throws {
        try await BunqSandbox.test { client in
            let session = try await client.openSession(secret: try await client.sandboxUser())
            let installations = try await client.call("GET", "/v1/installation", token: session.token)
            let installationId = try #require(installations.item("Id")?["id"] as? Int)
            #expect(installations.json["Pagination"] != nil)
            #expect(try await client.call("GET", "/v1/installation/\(installationId)", token: session.token).status == 200)
            let key = try await client.call("GET", "/v1/installation/\(installationId)/server-public-key", token: session.token)
            let pem = try #require(key.item("ServerPublicKey")?["server_public_key"] as? String)
            #expect(try RSAPublicKey(pem: pem).pem() == client.serverKey?.pem(), "the key that signs this installation's replies")
            #expect(try await client.call("GET", "/v1/installation/\(installationId + 1)/server-public-key",
                                          token: session.token).status == 404)

            let devices = try await client.call("GET", "/v1/device-server", token: session.token)
            let device = try #require(devices.item("DeviceServer"))
            #expect(device.keys.sorted() == ["created", "description", "id", "ip", "status", "updated"])
            let deviceId = try #require(device["id"] as? Int)
            #expect(try await client.call("GET", "/v1/device-server/\(deviceId)", token: session.token).item("DeviceServer") != nil)

            let userId = try #require(session.user["id"] as? Int)
            let clientId = try #require(try await client.call("POST", "/v1/user/\(userId)/oauth-client", ["status": "ACTIVE"],
                                                              token: session.token).item("Id")?["id"] as? Int)
            let callbacks = "/v1/user/\(userId)/oauth-client/\(clientId)/callback-url"
            let callbackId = try #require(try await client.call("POST", callbacks, ["url": "https://a.example/cb"],
                                                                token: session.token).item("Id")?["id"] as? Int)
            let put = try await client.call("PUT", "\(callbacks)/\(callbackId)", ["url": "https://b.example/cb"], token: session.token)
            #expect(put.status == 200 && put.item("Id")?["id"] as? Int == callbackId)
            let read = try await client.call("GET", "\(callbacks)/\(callbackId)", token: session.token)
            #expect(read.item("OauthCallbackUrl")?["url"] as? String == "https://b.example/cb")
            #expect(try await client.call("PUT", "\(callbacks)/\(callbackId)", ["url": "not a url"], token: session.token).status == 400)
            let list = try await client.call("GET", callbacks, token: session.token)
            #expect((list.json["Pagination"] as? [String: Any])?["future_url"] as? String == "\(callbacks)?newer_id=\(callbackId)")
        }
    }
}
