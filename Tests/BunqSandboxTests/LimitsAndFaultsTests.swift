import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import TestThreads
import Testing

@Suite(.ownThread) struct LimitsAndFaultsTests {
    @Test func bunqRateLimitsApplyPerEndpointAndMethod() async throws {
        try await BunqSandbox.test(SandboxConfiguration(rateLimits: true)) { client in
            let apiKey = try await client.sandboxUser()
            let session = try await client.openSession(secret: apiKey)
            // session-server: 1 per 30 s.
            let second = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(second.status == 429)
            #expect(second.error == "Too many requests. You can do a maximum of 1 calls per 30 second to this endpoint.")
            // GET: 3 per 3 s, per endpoint.
            var statuses: [Int] = []
            for _ in 0..<4 { statuses.append(try await client.call("GET", "/v1/user", token: session.token).status) }
            #expect(statuses == [200, 200, 200, 429])
            let userId = try #require(session.user["id"] as? Int)
            #expect(try await client.call("GET", "/v1/user/\(userId)", token: session.token).status == 200, "another endpoint")
            #expect(try await client.admin("GET", "stats")["rate_limited"] as? Int == 2)
        }
    }

    @Test func scaledLimitsAndAnOffsetClock() async throws {
        let configuration = SandboxConfiguration(rateLimits: true, rateLimitScale: 0.1, clockOffset: -600)
        try await BunqSandbox.test(configuration) { client in
            let apiKey = try await client.sandboxUser()
            _ = try await client.openSession(secret: apiKey)
            let second = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(second.status == 429, "one session-server call per 3 s at a tenth")
            try await Task.sleep(for: .seconds(3.1))
            let third = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(third.status == 200, "the scaled window has passed")
            let created = try #require(third.item("Token")?["created"] as? String)
            let formatter = DateFormatter()
            formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSSSSS"
            formatter.timeZone = TimeZone(identifier: "UTC")
            let stamp = try #require(formatter.date(from: created))
            #expect(abs(stamp.timeIntervalSinceNow + 600) < 5, "created runs 10 minutes behind: \(created)")
        }
    }

    @Test func faultRulesAnswerErrorsDelayDropAndMissign() async throws {
        // Limits off: calls back to back, each to see a fault rule answer; the limits are tested above.
        try await BunqSandbox.test { client in
            let apiKey = try await client.sandboxUser()
            let session = try await client.openSession(secret: apiKey)

            let rule = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user", "status": 503, "count": 2])
            #expect(rule["id"] as? Int == 1 && rule["count"] as? Int == 2)
            var statuses: [Int] = []
            for _ in 0..<3 { statuses.append(try await client.call("GET", "/v1/user", token: session.token).status) }
            #expect(statuses == [503, 503, 200], "the rule answers its count, then expires")

            _ = try await client.admin("POST", "faults", ["endpoint": "*", "status": 491, "probability": 1.0, "count": 1])
            let maintenance = try await client.call("GET", "/v1/user", token: session.token)
            #expect(maintenance.status == 491 && maintenance.error?.contains("maintenance") == true)

            // Every attempt dropped: libcurl retries once by itself when a reused connection closes before any
            // byte of a reply, so a single drop would go unseen.
            _ = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user*", "drop": true])
            do {
                _ = try await client.call("GET", "/v1/user", token: session.token)
                Issue.record("a dropped connection produced a reply")
            } catch let error as HTTPClientError {
                #expect(error.kind == .connectionLost)
            }
            _ = try await client.admin("DELETE", "faults")

            _ = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user", "delay_ms": 300, "count": 1])
            let started = ContinuousClock.now
            #expect(try await client.call("GET", "/v1/user", token: session.token).status == 200)
            #expect(ContinuousClock.now - started >= .milliseconds(300))

            _ = try await client.admin("POST", "faults", ["endpoint": "GET /v1/user", "bad_signature": true])
            await #expect(throws: CryptoError.self) { _ = try await client.call("GET", "/v1/user", token: session.token) }
            #expect(((try await client.admin("GET", "faults"))["faults"] as? [Any])?.count == 1)
            _ = try await client.admin("DELETE", "faults")
            #expect(try await client.call("GET", "/v1/user", token: session.token).status == 200)

            let stats = try await client.admin("GET", "stats")
            // 3 + 1 (maintenance) + 2 (drop and curl's retry) + 1 (delay) + 1 (bad signature) + 1.
            #expect((stats["requests"] as? [String: Int])?["GET /v1/user"] == 9)
            #expect(stats["sessions_created"] as? Int == 1 && stats["device_servers"] as? Int == 1)
        }
    }

    @Test func malformedFaultRulesAreRefused() async throws {
        // Limits off: only the admin API is called, which bunq's limits do not cover.
        try await BunqSandbox.test { client in
            for body: [String: Any] in [["status": 503], ["endpoint": "*"], ["endpoint": "*", "status": 200],
                                        ["endpoint": "*", "status": 500, "drop": true], ["endpoint": "*", "drop": true, "count": 0],
                                        ["endpoint": "*", "delay_ms": 5, "probability": 2.0]] {
                let reply = try await client.call("POST", "/_sandbox/faults", body, verify: false)
                #expect(reply.status == 400, "\(body)")
                #expect(reply.error != nil)
            }
            let garbage = try await client.http.execute(HTTPRequest(method: "POST", url: client.base + "/_sandbox/faults",
                                                                    body: Data("{not json".utf8)))
            #expect(garbage.status == 400)
        }
    }

    @Test func revokedCredentialsFailAtTheNextSessionServer() async throws {
        // Limits off: two session-server calls back to back test revocation, not the 1-per-30-s window (tested above).
        try await BunqSandbox.test { client in
            let apiKey = try await client.sandboxUser()
            let session = try await client.openSession(secret: apiKey)
            _ = try await client.admin("POST", "revoke", ["secret": apiKey])
            let refused = try await client.call("POST", "/v1/session-server", ["secret": apiKey], token: client.installationToken)
            #expect(refused.status == 400 && refused.error == "User credentials are incorrect. Incorrect API key or IP address.")
            // As at bunq, revoking the key ended the session it had made too.
            #expect(try await client.call("GET", "/v1/user", token: session.token).status != 200)
            let unknown = try await client.call("POST", "/_sandbox/revoke", ["secret": "sandbox_unknown"], verify: false)
            #expect(unknown.status == 404)
        }
    }

    @Test func unknownRoutesAndBadBodiesGetBunqErrors() async throws {
        // Limits off: a burst of malformed requests tests the error shapes, not the per-endpoint windows.
        try await BunqSandbox.test { client in
            let notFound = try await client.call("GET", "/v1/nothing-here")
            #expect(notFound.status == 404 && notFound.error != nil)
            #expect(try await client.call("PATCH", "/v1/installation").status == 405)
            let bad = try await client.http.execute(HTTPRequest(method: "POST", url: client.base + "/v1/installation",
                                                                body: Data("[1,2".utf8)))
            #expect(bad.status == 400)
            let noKey = try await client.call("POST", "/v1/installation", ["client_public_key": "not a key"])
            #expect(noKey.status == 400 && noKey.error?.contains("public key") == true)
        }
    }
}
