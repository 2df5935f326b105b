import BunqAPI
import BunqCrypto
import CurlHTTP
import Foundation
import Synchronization
import TestThreads
import Testing
import TestSupport

/// What goes over the wire, seen by a server the test controls.
@Suite(.ownThread) struct RequestShapeTests {
    @Test func headersTokenAndSignatureOverTheExactBytesSent() async throws {
        let key = try RSAPrivateKey.generateBlocking()
        let serverKey = try RSAPrivateKey.generateBlocking()
        let seen = Mutex<[(headers: [String: String], body: [UInt8])]>([])
        try await TestHTTPServer.with(handler: { request in
            var headers: [String: String] = [:]
            for name in ["User-Agent", "Cache-Control", "X-Bunq-Client-Request-Id", "X-Bunq-Geolocation",
                         "X-Bunq-Language", "X-Bunq-Region", "X-Bunq-Client-Authentication", "X-Bunq-Client-Signature"] {
                headers[name] = request.header(name)
            }
            seen.withLock { $0.append((headers, request.body)) }
            let body = Array(#"{"Response":[{"Id":{"id":35}}]}"#.utf8)
            return TestHTTPResponse(headers: [("X-Bunq-Server-Signature", try! serverKey.base64Signature(for: body)),
                                              ("x-bunq-client-response-id", "r-1")], body: body)
        }) { server in
            // Unlimited: one request to a test server checks its shape; the limiter has its own tests.
            let client = try BunqClient(endpoints: try .emulator(server.baseURL), rateLimiter: BunqRateLimiter(mode: .unlimited))
            let context = InstallationContext(key: key, token: "installation-token", serverKey: serverKey.publicKey)
            let secret = "sandbox_a/b\"c"
            #expect(try await client.registerDevice(context, description: "d", secret: secret) == 35)
            #expect(try await client.registerDevice(context, description: "d", secret: secret) == 35)
            await client.shutdown()
        }
        let requests = seen.withLock { $0 }
        #expect(requests.count == 2)
        let (headers, body) = requests[0]
        #expect(headers["User-Agent"] == "bunq-sessiond/\(BunqSessiondVersion.current)")
        #expect(headers["Cache-Control"] == "no-cache" && headers["X-Bunq-Geolocation"] == "0 0 0 0 NL")
        #expect(headers["X-Bunq-Language"] == "en_US" && headers["X-Bunq-Region"] == "nl_NL")
        #expect(headers["X-Bunq-Client-Authentication"] == "installation-token")
        #expect(UUID(uuidString: headers["X-Bunq-Client-Request-Id"] ?? "") != nil)
        #expect(headers["X-Bunq-Client-Request-Id"] != requests[1].headers["X-Bunq-Client-Request-Id"], "a fresh id each time")
        // The signature covers exactly the bytes that arrived.
        try key.publicKey.verify(base64Signature: try #require(headers["X-Bunq-Client-Signature"]), for: body)
        let json = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
        #expect(json?["secret"] as? String == "sandbox_a/b\"c")
    }

    @Test func anUnsignedSuccessIsNotAuthentic() async throws {
        let serverKey = try RSAPrivateKey.generateBlocking()
        try await TestHTTPServer.with(handler: { _ in TestHTTPResponse(text: #"{"Response":[{"Id":{"id":1}}]}"#) }) { server in
            // Unlimited: one request to a test server checks its shape; the limiter has its own tests.
            let client = try BunqClient(endpoints: try .emulator(server.baseURL), rateLimiter: BunqRateLimiter(mode: .unlimited))
            let context = InstallationContext(key: try RSAPrivateKey.generateBlocking(), token: "t", serverKey: serverKey.publicKey)
            let error = await bunqError { _ = try await client.registerDevice(context, description: "d", secret: "s") }
            #expect(error?.kind == .responseNotAuthentic)
            await client.shutdown()
        }
    }

    @Test func unparseableRepliesAreProtocolErrors() async throws {
        try await TestHTTPServer.with(handler: { request in
            request.path.hasSuffix("installation") ? TestHTTPResponse(text: "<html>gateway</html>")
                : TestHTTPResponse(status: 502, text: "<html>bad gateway</html>")
        }) { server in
            // Unlimited: one request to a test server checks its shape; the limiter has its own tests.
            let client = try BunqClient(endpoints: try .emulator(server.baseURL), rateLimiter: BunqRateLimiter(mode: .unlimited))
            let key = try RSAPrivateKey.generateBlocking()
            let garbled = await bunqError { _ = try await client.createInstallation(key: key) }
            #expect(garbled?.kind == .protocolError)
            let gateway = await bunqError {
                _ = try await client.currentUser(InstallationContext(key: key, token: "t", serverKey: key.publicKey), sessionToken: "s")
            }
            #expect(gateway?.kind == .transient && gateway?.status == 502)
            await client.shutdown()
        }
    }
}
