import BunqSandbox
import Foundation
import NIOHTTP1
import Synchronization

/// A request as the test HTTP server received it.
public struct TestHTTPRequest: Sendable {
    let request: ServerRequest

    public var method: String { request.method }
    /// The request target as sent, path and query.
    public var uri: String { request.uri }
    public var path: String { request.path }
    public var body: [UInt8] { request.body }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        request.headers.first(name: name)
    }

    /// Suspends until the client closes this request's connection (or the server shuts down).
    public func connectionClosed() async {
        await request.connectionClosed()
    }
}

/// What the handler answers. Returning nil from the handler closes the connection without any response.
public struct TestHTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int = 200, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public init(status: Int = 200, headers: [(String, String)] = [], text: String) {
        self.init(status: status, headers: headers, body: Array(text.utf8))
    }
}

/// A real HTTP/1.1 server on a loopback port, for tests that need a peer they control (the emulator's server
/// core with a test handler). It keeps connections alive and counts them, so tests can observe connection reuse
/// and closes.
public final class TestHTTPServer: Sendable {
    public typealias Handler = @Sendable (TestHTTPRequest) async -> TestHTTPResponse?

    public let port: Int
    private let counters: Counters

    /// Connections accepted since start.
    public var connectionsAccepted: Int { counters.state.withLock { $0.accepted } }
    /// Connections currently open.
    public var connectionsOpen: Int { counters.state.withLock { $0.open } }

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    private init(port: Int, counters: Counters) {
        self.port = port
        self.counters = counters
    }

    /// Starts a server on 127.0.0.1 (an ephemeral port), runs `body` with it, then shuts it down.
    public static func with<T: Sendable>(
        handler: @escaping Handler,
        _ body: @escaping @Sendable (TestHTTPServer) async throws -> T
    ) async throws -> T {
        let counters = Counters()
        return try await withBoundServer(of: { onBound in
            try await HTTPServerCore.serve(
                host: "127.0.0.1", port: 0,
                handler: { request in
                    await handler(TestHTTPRequest(request: request)).map {
                        ServerResponse(status: $0.status, headers: $0.headers, body: $0.body)
                    }
                },
                onConnection: { delta in counters.record(delta) },
                onBound: onBound)
        }) { port in
            try await body(TestHTTPServer(port: port, counters: counters))
        }
    }
}

/// Connection counters shared between the server's callbacks and the `TestHTTPServer` handed to the test.
private final class Counters: Sendable {
    let state = Mutex<(accepted: Int, open: Int)>((0, 0))
    func record(_ delta: Int) {
        state.withLock { counters in
            if delta > 0 { counters.accepted += 1 }
            counters.open += delta
        }
    }
}
