import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import TestThreads
import Testing
import TestSupport

@Suite(.ownThread) struct SessionFlowTests {
    @Test func apiKeyIdentityGetsAWorkingSession() async throws {
        try await BunqSandbox.test { client in
            let apiKey = try await client.sandboxUser()
            #expect(apiKey.hasPrefix("sandbox_"))
            let session = try await client.openSession(secret: apiKey)
            #expect(session.userType == "UserPerson")
            #expect(session.user["session_timeout"] as? Int == 604_800)
            let userId = try #require(session.user["id"] as? Int)

            let users = try await client.call("GET", "/v1/user", token: session.token)
            #expect(users.status == 200 && users.item("UserPerson")?["id"] as? Int == userId)
            let accounts = try await client.call("GET", "/v1/user/\(userId)/monetary-account-bank", token: session.token)
            #expect(accounts.item("MonetaryAccountBank")?["status"] as? String == "ACTIVE")
            #expect(accounts.json["Pagination"] != nil)
            let all = try await client.call("GET", "/v1/user/\(userId)/monetary-account", token: session.token)
            #expect(all.items.count == 1)
            // Another user's id is not this session's to read.
            #expect(try await client.call("GET", "/v1/user/\(userId + 1)", token: session.token).status == 403)
        }
    }

    @Test func companyUsersGetUserCompanySessionsWithAnAccount() async throws {
        try await BunqSandbox.test { client in
            let reply = try await client.call("POST", "/v1/sandbox-user-company")
            let apiKey = try #require(reply.item("ApiKey")?["api_key"] as? String)
            let session = try await client.openSession(secret: apiKey)
            #expect(session.userType == "UserCompany")
            let userId = try #require(session.user["id"] as? Int)
            let accounts = try await client.call("GET", "/v1/user/\(userId)/monetary-account-bank", token: session.token)
            #expect(accounts.item("MonetaryAccountBank")?["user_id"] as? Int == userId)
        }
    }

    @Test func repliesAreCompactBunqJSONWithEscapedSlashes() async throws {
        try await BunqSandbox.test { client in
            // A reply with a slash to escape: a server key's PEM lacks one about once in 500 keys (base64 of a random
            // key; a run met one), and the emulator hands its three keys to installations in turn, so another
            // installation is asked for until its key has one.
            var reply = try await client.call("POST", "/v1/installation", ["client_public_key": try client.key.publicKey.pem()])
            for _ in 0..<10 where !(reply.item("ServerPublicKey")?["server_public_key"] as? String ?? "").contains("/") {
                reply = try await client.call("POST", "/v1/installation", ["client_public_key": try client.key.publicKey.pem()])
            }
            let text = String(decoding: reply.body, as: UTF8.self)
            #expect(text.hasPrefix(#"{"Response":[{"Id":{"id":"#))
            #expect(!text.contains(": ") && !text.contains("\n"))
            // Every slash inside a string is escaped as \/ (PEM base64 is full of them).
            let unescaped = zip(text.dropFirst(), text).filter { $0.0 == "/" && $0.1 != "\\" }
            #expect(unescaped.isEmpty)
            #expect(text.contains(#"\/"#))
            // Timestamps in bunq's format.
            let created = try #require(reply.item("Token")?["created"] as? String)
            #expect(created.range(of: #"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$"#, options: .regularExpression) != nil)
            #expect(reply.headers["X-Bunq-Server-Signature"] == nil, "the installation reply precedes the server key")
        }
    }

    @Test func tokensAndSignaturesAreEnforced() async throws {
        try await BunqSandbox.test { client in
            let apiKey = try await client.sandboxUser()
            try await client.install()
            let token = client.installationToken
            // Wrong or missing token.
            let noToken = try await client.call("POST", "/v1/device-server", ["description": "x", "secret": apiKey])
            #expect(noToken.status == 401 && noToken.error == "Insufficient authentication.")
            _ = try await client.call("POST", "/v1/device-server", ["description": "x", "secret": apiKey], token: token)

            let unsigned = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: token, signing: .none)
            #expect(unsigned.status == 466)
            #expect(unsigned.error == "For this operation a request signature is required.")
            let other = try RSAPrivateKey.generateBlocking()
            let forged = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: token, signing: .key(other))
            #expect(forged.status == 400 && forged.error == "The request signature is invalid.")
            // A signed call elsewhere is verified too.
            let forgedDevice = try await client.call("POST", "/v1/device-server", ["description": "x", "secret": apiKey],
                                                     token: token, signing: .key(other))
            #expect(forgedDevice.status == 400)
            let stats = try await client.admin("GET", "stats")
            #expect(stats["rejected_signatures"] as? Int == 3)

            let session = try await client.session(secret: apiKey)
            // The installation token is not a session token.
            #expect(try await client.call("GET", "/v1/user", token: token).status == 401)
            #expect(try await client.call("GET", "/v1/user", token: session.token).status == 200)
        }
    }

    @Test func unboundAndWrongSecretsAreCredentialErrors() async throws {
        try await BunqSandbox.test { client in
            try await client.install()
            let wrong = try await client.call("POST", "/v1/device-server", ["description": "x", "secret": "sandbox_nope"],
                                              token: client.installationToken)
            #expect(wrong.status == 400 && wrong.error == "User credentials are incorrect. Incorrect API key or IP address.")
            // A real key that was never bound to this installation's device.
            let apiKey = try await client.sandboxUser()
            let unbound = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(unbound.status == 400 && unbound.error?.hasPrefix("User credentials are incorrect") == true)
        }
    }

    // Limits off in both expiry tests: they open sessions seconds apart to test expiry, not the session-server limit.
    // Sessions of 3 s: a loaded machine can stall a test's task for a second between two calls; ending a session is
    // checked on a sandbox whose sessions last, so the two never race.
    @Test func sessionsExpireServerSideAndCanBeEnded() async throws {
        try await BunqSandbox.test(SandboxConfiguration(sessionTimeout: 3, rateLimits: false, deadSessionAnswer: .status401)) { client in
            let apiKey = try await client.sandboxUser()
            // Read before the session is asked for: the emulator starts its timeout when it creates the session, a
            // moment before its answer reaches us (read after it, a run measured the expiry 5 ms "early").
            let opened = ContinuousClock.now
            let first = try await client.openSession(secret: apiKey)
            #expect(first.user["session_timeout"] as? Int == 3)
            #expect(try await client.call("GET", "/v1/user", token: first.token).status == 200)
            // Awaited, not slept for: the session dies at its timeout, and not before.
            var expired: (status: Int, error: String?) = (0, nil)
            #expect(try await eventually(within: .seconds(20), every: .milliseconds(100)) {
                let reply = try await client.call("GET", "/v1/user", token: first.token)
                expired = (reply.status, reply.error)
                return reply.status != 200
            })
            #expect(ContinuousClock.now - opened >= .seconds(3), "not before its timeout")
            #expect(expired.status == 401 && expired.error == "Insufficient authentication.")
            #expect(try await client.admin("GET", "stats")["sessions_active"] as? Int == 0)
        }
        try await BunqSandbox.test(SandboxConfiguration(sessionTimeout: 600, rateLimits: false, deadSessionAnswer: .status401)) { client in
            let second = try await client.openSession(secret: try await client.sandboxUser())
            #expect(try await client.call("GET", "/v1/user", token: second.token).status == 200)
            #expect(try await client.call("DELETE", "/v1/session/0", token: second.token).status == 200)
            #expect(try await client.call("GET", "/v1/user", token: second.token).status == 401)
        }
    }

    /// Each `--expired-session-status` mode, and a wrong `{userID}` answered as a permissions error, never with
    /// a dead session's words.
    @Test func deadSessionAnswersAndPermissionErrors() async throws {
        let expected: [(SandboxConfiguration.DeadSessionAnswer, [(Int, String)])] = [
            (.status401, [(401, "Insufficient authentication."), (401, "Insufficient authentication.")]),
            (.status403, [(403, "Insufficient authorisation."), (403, "Insufficient authorisation.")]),
            (.mixed, [(401, "Insufficient authentication."), (403, "Insufficient authentication."),
                      (403, "Insufficient authorisation."), (401, "Insufficient authentication.")]),
        ]
        for (mode, answers) in expected {
            try await BunqSandbox.test(SandboxConfiguration(rateLimits: false, deadSessionAnswer: mode)) { client in
                let session = try await client.openSession(secret: try await client.sandboxUser())
                let userId = try #require(session.user["id"] as? Int)
                let other = try await client.call("GET", "/v1/user/\(userId + 1)", token: session.token)
                #expect(other.status == 403 && other.error == "You're not allowed to make this call.", "\(mode)")
                #expect(try await client.call("DELETE", "/v1/session/0", token: session.token).status == 200)
                var seen: [(Int, String)] = []
                for _ in answers {
                    let reply = try await client.call("GET", "/v1/user", token: session.token)
                    seen.append((reply.status, reply.error ?? ""))
                }
                #expect(seen.map(\.0) == answers.map(\.0) && seen.map(\.1) == answers.map(\.1), "\(mode): \(seen)")
            }
        }
    }

    @Test func installationsUseDifferentServerKeys() async throws {
        try await BunqSandbox.test { client in
            var keys: [String] = []
            for _ in 0..<2 {
                let reply = try await client.call("POST", "/v1/installation", ["client_public_key": try client.key.publicKey.pem()])
                keys.append(try #require(reply.item("ServerPublicKey")?["server_public_key"] as? String))
            }
            #expect(keys[0] != keys[1], "a client that verifies with another installation's key must fail")
            #expect(try await client.admin("GET", "stats")["installations"] as? Int == 2)
        }
    }
}
