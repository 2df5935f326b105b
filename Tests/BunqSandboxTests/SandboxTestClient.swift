import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import Testing

/// A minimal bunq client for driving the emulator in tests: it signs bodies with the installation key and
/// verifies replies with the server key, like a real client.
struct SandboxTestClient: Sendable {
    let base: String
    let http: HTTPClient
    let key: RSAPrivateKey
    var installationToken = ""
    var serverKey: RSAPublicKey?

    static func make(_ base: String) async throws -> SandboxTestClient {
        try SandboxTestClient(base: base, http: HTTPClient(), key: await sharedKey())
    }

    /// One installation key for all tests: generating RSA keys is the slow part of a test.
    private static let keyTask = Task { try await RSAPrivateKey.generate() }
    static func sharedKey() async throws -> RSAPrivateKey { try await keyTask.value }

    struct Reply: Sendable {
        let status: Int
        let headers: HTTPHeaders
        let body: Data
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
        /// The items of `Response`, each as (type, object).
        var items: [(String, [String: Any])] {
            ((json["Response"] as? [[String: Any]]) ?? []).compactMap { item in
                item.first.map { ($0.key, ($0.value as? [String: Any]) ?? [:]) }
            }
        }
        func item(_ type: String) -> [String: Any]? { items.first { $0.0 == type }?.1 }
        var error: String? { ((json["Error"] as? [[String: Any]])?.first?["error_description"]) as? String }
    }

    enum Signing { case installationKey, none, key(RSAPrivateKey) }

    /// The same installation, calling from another local address (127.0.0.2, ...): to bunq, another IP. Shut
    /// its `http` down after use.
    func from(_ localAddress: String) throws -> SandboxTestClient {
        var configuration = HTTPClient.Configuration()
        configuration.localAddress = localAddress
        var other = SandboxTestClient(base: base, http: try HTTPClient(configuration: configuration), key: key)
        other.installationToken = installationToken
        other.serverKey = serverKey
        return other
    }

    /// One call, with bunq's headers (a fresh request id unless `requestId`; none of `omitting`).
    func call(_ method: String, _ path: String, _ body: [String: Any]? = nil, token: String? = nil,
              signing: Signing = .installationKey, verify: Bool = true, requestId: String? = nil,
              omitting: Set<String> = []) async throws -> Reply {
        let bytes = try body.map { try JSONSerialization.data(withJSONObject: $0) } ?? Data()
        var headers = HTTPHeaders()
        for (name, value) in [("X-Bunq-Client-Request-Id", requestId ?? UUID().uuidString), ("Cache-Control", "no-cache"),
                              ("X-Bunq-Geolocation", "0 0 0 0 NL"), ("X-Bunq-Language", "en_US"),
                              ("X-Bunq-Region", "nl_NL"), ("User-Agent", "bunq-sessiond-tests")]
            where !omitting.contains(name) {
            headers.add(name, value)
        }
        if let token { headers.add("X-Bunq-Client-Authentication", token) }
        switch signing {
        case .installationKey: if token != nil { headers.add("X-Bunq-Client-Signature", try key.base64Signature(for: bytes)) }
        case .key(let other): headers.add("X-Bunq-Client-Signature", try other.base64Signature(for: bytes))
        case .none: break
        }
        let response = try await http.execute(HTTPRequest(method: method, url: base + path, headers: headers, body: bytes))
        #expect(response.headers["X-Bunq-Client-Response-Id"] != nil, "every reply carries a response id")
        #expect(response.headers["X-Bunq-Client-Request-Id"] == headers["X-Bunq-Client-Request-Id"])
        // Like bunq's SDKs: a 2xx reply must be signed; others are checked when signed (an unknown token's error
        // cannot be, as no installation is known).
        if verify, let serverKey, token != nil {
            if let signature = response.headers["X-Bunq-Server-Signature"] {
                try serverKey.verify(base64Signature: signature, for: response.body)
            } else {
                #expect(!(200..<300).contains(response.status), "reply to \(method) \(path) is unsigned")
            }
        }
        return Reply(status: response.status, headers: response.headers, body: response.body)
    }

    mutating func install() async throws {
        let reply = try await call("POST", "/v1/installation", ["client_public_key": try key.publicKey.pem()])
        #expect(reply.status == 200)
        #expect(reply.items.map(\.0) == ["Id", "Token", "ServerPublicKey"])
        installationToken = try #require(reply.item("Token")?["token"] as? String)
        serverKey = try RSAPublicKey(pem: try #require(reply.item("ServerPublicKey")?["server_public_key"] as? String))
    }

    /// installation (if needed) → device-server → session-server; returns the session token and user object.
    mutating func openSession(secret: String) async throws -> (token: String, userType: String, user: [String: Any]) {
        if installationToken.isEmpty { try await install() }
        let device = try await call("POST", "/v1/device-server", ["description": "test", "secret": secret,
                                                                   "permitted_ips": ["*"]], token: installationToken)
        #expect(device.status == 200, "\(device.error ?? "")")
        return try await session(secret: secret)
    }

    func session(secret: String) async throws -> (token: String, userType: String, user: [String: Any]) {
        let reply = try await call("POST", "/v1/session-server", ["secret": secret], token: installationToken)
        #expect(reply.status == 200, "\(reply.error ?? "")")
        #expect(reply.items.count == 3 && reply.items[0].0 == "Id" && reply.items[1].0 == "Token")
        let user = try #require(reply.items.last)
        return (try #require(reply.item("Token")?["token"] as? String), user.0, user.1)
    }

    func sandboxUser() async throws -> String {
        let reply = try await call("POST", "/v1/sandbox-user-person")
        return try #require(reply.item("ApiKey")?["api_key"] as? String)
    }

    func admin(_ method: String, _ path: String, _ body: [String: Any]? = nil) async throws -> [String: Any] {
        let reply = try await call(method, "/_sandbox/" + path, body, verify: false)
        #expect(reply.status == 200, "admin \(path): \(String(decoding: reply.body, as: UTF8.self))")
        return reply.json
    }
}

extension BunqSandbox {
    /// Runs `body` against an emulator with rate limits off (unless given) and a fresh test client. Off by default:
    /// these tests are about the emulator's wire format and rules, each making many calls a second from one IP;
    /// its limits have their own tests (LimitsAndFaultsTests), and the daemon's tests run under them.
    static func test<T: Sendable>(_ configuration: SandboxConfiguration = SandboxConfiguration(rateLimits: false),
                                  _ body: @escaping @Sendable (inout SandboxTestClient) async throws -> T) async throws -> T {
        try await withRunning(configuration) { base in
            var client = try await SandboxTestClient.make(base)
            do {
                let result = try await body(&client)
                await client.http.shutdown()
                return result
            } catch {
                await client.http.shutdown()
                throw error
            }
        }
    }
}
