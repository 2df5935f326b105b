import BunqAPI
import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import Testing
import TestSupport

/// The emulator's admin API, for setting up faults and reading stats.
struct SandboxAdmin: Sendable {
    let base: String
    let http: HTTPClient

    @discardableResult
    func call(_ method: String, _ path: String, _ body: [String: any Sendable]? = nil) async throws -> [String: Any] {
        let data = try body.map { try JSONSerialization.data(withJSONObject: $0) } ?? Data()
        let response = try await http.execute(HTTPRequest(method: method, url: base + "/_sandbox/" + path, body: data))
        #expect(response.status == 200, "admin \(path): \(String(decoding: response.body, as: UTF8.self))")
        return (try JSONSerialization.jsonObject(with: response.body) as? [String: Any]) ?? [:]
    }

    func stat(_ name: String) async throws -> Int { try await call("GET", "stats")[name] as? Int ?? -1 }

    func fault(_ rule: [String: any Sendable]) async throws { try await call("POST", "faults", rule) }

    func sandboxUserKey() async throws -> String {
        // bunq's swagger requires a User-Agent on every call, and the emulator holds to it.
        let response = try await http.execute(HTTPRequest(method: "POST", url: base + "/v1/sandbox-user-person",
                                                          headers: ["User-Agent": "bunq-sessiond-tests"]))
        let json = try JSONSerialization.jsonObject(with: response.body) as? [String: Any]
        let item = (json?["Response"] as? [[String: Any]])?.first?["ApiKey"] as? [String: Any]
        return try #require(item?["api_key"] as? String)
    }
}

/// Runs `body` with a BunqClient pointed at a fresh in-process emulator (rate limits off on both sides: these tests
/// are about the protocol, call by call; the limits' own tests are in the sandbox's and the daemon's suites).
func withSandboxClient<T: Sendable>(
    _ configuration: SandboxConfiguration = SandboxConfiguration(rateLimits: false),
    timeout: Duration = .seconds(5),
    _ body: @escaping @Sendable (BunqClient, SandboxAdmin) async throws -> T
) async throws -> T {
    try await BunqSandbox.withRunning(configuration) { base in
        let client = try BunqClient(endpoints: try .emulator(base), rateLimiter: BunqRateLimiter(mode: .unlimited),
                                    timeout: timeout)
        let admin = SandboxAdmin(base: base, http: try HTTPClient())
        do {
            let result = try await body(client, admin)
            await client.shutdown()
            await admin.http.shutdown()
            return result
        } catch {
            await client.shutdown()
            await admin.http.shutdown()
            throw error
        }
    }
}

/// A pseudo eIDAS certificate and key made with openssl, as bunq's docs show.
func makeEIDAS(commonName: String = "My App PISP AISP", days: Int = 365) throws -> (certificate: String, key: String) {
    let dir = try TemporaryDirectory()
    defer { dir.remove() }
    try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("key.pem"), "-out",
                       dir.path("cert.pem"), "-days", "\(days)", "-nodes", "-subj", "/CN=\(commonName)/C=NL"])
    return (try dir.read("cert.pem"), try dir.read("key.pem"))
}

/// The error a call threw, as a BunqAPIError.
func bunqError(_ operation: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> BunqAPIError? {
    do {
        try await operation()
        Issue.record("expected a BunqAPIError", sourceLocation: sourceLocation)
        return nil
    } catch let error as BunqAPIError {
        return error
    } catch {
        Issue.record("expected a BunqAPIError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
