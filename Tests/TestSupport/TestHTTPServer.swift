import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A request as the test HTTP server received it.
public struct TestHTTPRequest: Sendable {
    public let method: String
    /// The request target as sent, path and query.
    public let uri: String
    public let headers: [(name: String, value: String)]
    public let body: [UInt8]
    let channel: any Channel

    public var path: String { String(uri.prefix { $0 != "?" }) }

    /// The query parameters, percent-decoded.
    public var query: [String: String] {
        guard let components = URLComponents(string: uri) else { return [:] }
        return Dictionary((components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { a, _ in a })
    }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    /// Suspends until the client closes this request's connection (or the server shuts down).
    public func connectionClosed() async {
        try? await channel.closeFuture.get()
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

/// A real HTTP/1.1 server on a loopback port, for tests that need a peer they control. It keeps connections
/// alive and counts them, so tests can observe connection reuse and closes.
public final class TestHTTPServer: Sendable {
    public typealias Handler = @Sendable (TestHTTPRequest) async -> TestHTTPResponse?

    public let port: Int
    private let counters: Mutex<(accepted: Int, open: Int)>

    /// Connections accepted since start.
    public var connectionsAccepted: Int { counters.withLock { $0.accepted } }
    /// Connections currently open.
    public var connectionsOpen: Int { counters.withLock { $0.open } }

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    private init(port: Int) {
        self.port = port
        self.counters = Mutex((0, 0))
    }

    /// Starts a server on 127.0.0.1 (an ephemeral port), runs `body` with it, then shuts it down.
    public static func with<T: Sendable>(
        handler: @escaping Handler,
        _ body: @Sendable (TestHTTPServer) async throws -> T
    ) async throws -> T {
        let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        let server = TestHTTPServer(port: serverChannel.channel.localAddress?.port ?? 0)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await withThrowingDiscardingTaskGroup { connections in
                    try await serverChannel.executeThenClose { inbound in
                        for try await connection in inbound {
                            server.counters.withLock { $0.accepted += 1; $0.open += 1 }
                            connections.addTask {
                                await server.serve(connection, handler)
                                server.counters.withLock { $0.open -= 1 }
                            }
                        }
                    }
                }
                return nil
            }
            defer { group.cancelAll() }
            let result = try await body(server)
            try? await serverChannel.channel.close()
            return result
        }
    }

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
                       _ handler: Handler) async {
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                    body = []
                case .body(let buffer):
                    body.append(contentsOf: buffer.readableBytesView)
                case .end:
                    guard let requestHead = head else { return }
                    let request = TestHTTPRequest(
                        method: requestHead.method.rawValue, uri: requestHead.uri,
                        headers: requestHead.headers.map { ($0.name, $0.value) }, body: body,
                        channel: connection.channel)
                    guard let response = await handler(request) else { return }
                    var headers = HTTPHeaders(response.headers)
                    headers.replaceOrAdd(name: "content-length", value: String(response.body.count))
                    if !requestHead.isKeepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
                    try await outbound.write(.head(HTTPResponseHead(
                        version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body))))
                    try await outbound.write(.end(nil))
                    if !requestHead.isKeepAlive { return }
                }
            }
        }
    }
}
