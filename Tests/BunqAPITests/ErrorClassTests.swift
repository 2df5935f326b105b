import BunqAPI
import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import TestThreads
import Testing

@Suite(.ownThread) struct ErrorClassTests {
    /// A bootstrapped API-key identity and its session.
    func bootstrapped(_ client: BunqClient, _ admin: SandboxAdmin) async throws -> (IdentityRegistration, BunqSession) {
        var registration = IdentityRegistration(kind: .apiKey, secret: try await admin.sandboxUserKey())
        let session = try await client.bootstrap(&registration, deviceDescription: "errors") { _ in }
        return (registration, session)
    }

    @Test func everyFaultMapsToItsClass() async throws {
        // The client's timeout is what the delay case exceeds; it must also leave the bootstrap (the emulator makes
        // an RSA key in this process) room on a loaded machine: 700 ms did not, once, in CI.
        try await withSandboxClient(timeout: .seconds(3)) { client, admin in
            var (registration, session) = try await bootstrapped(client, admin)
            let context = try registration.installationContext()
            let user = { _ = try await client.currentUser(context, sessionToken: session.token) }

            let cases: [([String: any Sendable], BunqAPIError.Kind, Int?)] = [
                (["status": 500], .transient, 500),
                (["status": 491], .transient, 491),
                (["status": 429, "error": "Too many requests. You can do a maximum of 3 calls per 3 second to this endpoint."], .rateLimited, 429),
                (["status": 401, "error": "Insufficient authentication."], .sessionInvalid, 401),
                (["status": 403, "error": "Insufficient authorisation."], .sessionInvalid, 403),
                // bunq answers a dead session with 403 in either wording; a live session's permission error is
                // not a dead session, and renewing would not help.
                (["status": 403, "error": "Insufficient authentication."], .sessionInvalid, 403),
                (["status": 403, "error": "You're not allowed to make this call."], .permissionDenied, 403),
                // What a proxy in front of bunq answers: HTML or nothing, unsigned; transient, never a parse crash.
                (["preset": "html_502"], .transient, 502),
                (["preset": "empty_503"], .transient, 503),
                (["preset": "maintenance_491"], .transient, 491),
                (["preset": "user_error_490"], .badRequest, 490),
                (["status": 466, "error": "For this operation a request signature is required."], .signatureRequired, 466),
                (["status": 404, "error": "Route not found."], .badRequest, 404),
                (["bad_signature": true], .responseNotAuthentic, 200),
                (["drop": true], .transient, nil),
                (["delay_ms": 4_000], .transient, nil),
            ]
            for (rule, kind, status) in cases {
                try await admin.fault(["endpoint": "GET /v1/user"].merging(rule) { a, _ in a }.merging(["count": 2]) { a, _ in a })
                let error = await bunqError(user)
                #expect(error?.kind == kind, "\(rule): \(String(describing: error))")
                #expect(error?.status == status, "\(rule)")
                try await admin.call("DELETE", "faults")
            }
            let rateLimited = await bunqError {
                try await admin.fault(["endpoint": "GET /v1/user", "status": 429, "count": 1])
                try await user()
            }
            #expect(rateLimited?.message.hasPrefix("Too many requests.") == true)
            #expect(rateLimited?.responseId != nil, "the response id is kept for bunq support")
            // Every call, retries included, went out with a fresh request id: the emulator refuses a reused one.
            #expect(try await admin.stat("request_ids_rejected") == 0)

            // A signature from the wrong key: 400 "The request signature is invalid.".
            let wrongKey = InstallationContext(key: try RSAPrivateKey.generateBlocking(), token: context.token,
                                               serverKey: context.serverKey)
            let forged = await bunqError { _ = try await client.createSession(wrongKey, secret: registration.secret ?? "") }
            #expect(forged?.kind == .signatureInvalid && forged?.status == 400)

            // A revoked credential: credentials rejected, which no retry can fix.
            try await admin.call("POST", "revoke", ["secret": registration.secret ?? ""])
            let revoked = await bunqError { _ = try await client.openSession(&registration) }
            #expect(revoked?.kind == .credentialsRejected && revoked?.isRetryable == false)
            #expect(revoked?.message == "User credentials are incorrect. Incorrect API key or IP address.")
            _ = session
        }
    }

    @Test func aReplyForAnotherInstallationIsNotAuthentic() async throws {
        try await withSandboxClient { client, admin in
            let (registration, session) = try await bootstrapped(client, admin)
            var other = IdentityRegistration(kind: .apiKey, secret: try await admin.sandboxUserKey())
            _ = try await client.bootstrap(&other, deviceDescription: "other") { _ in }
            let mine = try registration.installationContext()
            // Verifying with the other installation's server key (the sandbox gives installations distinct keys).
            let mixed = InstallationContext(key: mine.key, token: mine.token, serverKey: try other.installationContext().serverKey)
            let error = await bunqError { _ = try await client.currentUser(mixed, sessionToken: session.token) }
            #expect(error?.kind == .responseNotAuthentic)
        }
    }

    @Test func unreachableBunqIsTransientAndTLSIsNot() async throws {
        // Unlimited: nothing answers on that port, so no call reaches a bunq window.
        let client = try BunqClient(endpoints: try .emulator("http://127.0.0.1:\(closedPort())"),
                                    rateLimiter: BunqRateLimiter(mode: .unlimited))
        let refused = await bunqError { _ = try await client.createInstallation(key: try RSAPrivateKey.generateBlocking()) }
        #expect(refused?.kind == .transient && refused?.transportError?.kind == .connectionRefused)
        #expect(refused?.endpoint == "POST installation")
        await client.shutdown()
    }
}

/// A loopback port with nothing listening.
func closedPort() throws -> Int {
    let socket = try ServerSocketProbe()
    return socket.port
}

struct ServerSocketProbe {
    let port: Int
    init() throws {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, length) == 0 && getsockname(fd, sa, &length) == 0
            }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }
}
