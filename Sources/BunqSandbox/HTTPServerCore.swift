import AcceptedConnections
import NIOCore
import NIOHTTP1
import NIOPosix

/// A request as received: method, target, headers, the whole body, and the peer's IP address.
public struct ServerRequest: Sendable {
    public let method: String
    /// The request target, path and query.
    public let uri: String
    public let headers: HTTPHeaders
    public let body: [UInt8]
    public let remoteIP: String
    let channel: any Channel

    public var path: String { String(uri.prefix { $0 != "?" }) }

    /// The first value of the header `name` (any case), or nil.
    public func header(_ name: String) -> String? { headers.first(name: name) }

    /// Suspends until the peer closes the connection.
    public func connectionClosed() async {
        try? await channel.closeFuture.get()
    }
}

/// A complete response; a handler returning nil closes the connection without answering.
public struct ServerResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A small HTTP/1.1 server on SwiftNIO with structured concurrency: one child task per connection, keep-alive,
/// whole-body requests. The emulator runs on it, and tests reuse it for peers they control.
public enum HTTPServerCore {
    public typealias Handler = @Sendable (ServerRequest) async -> ServerResponse?

    /// Requests with larger bodies are refused and their connection closed.
    public static let maxBodyBytes = 4 << 20

    /// Binds `host:port` (0: any free port), reports the bound port through `onBound`, then serves until the
    /// calling task is cancelled. `onConnection` sees each connection open (+1) and close (-1).
    public static func serve(host: String, port: Int, handler: @escaping Handler,
                             onConnection: @escaping @Sendable (Int) -> Void = { _ in },
                             onBound: @Sendable (Int) async throws -> Void) async throws {
        // Serving ends by cancellation, which drops the connections accepted but not yet taken by the loop:
        // they are held here and closed instead (see UnclaimedConnections).
        let unclaimed = UnclaimedConnections<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>>()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    // nil: the server stopped before this connection was set up; it is closed.
                    try unclaimed.make(for: channel) {
                        // A latency hint, set per connection: where a sandbox refuses it (EPERM seen under
                        // systemd-nspawn), the connection goes on without it instead of failing the whole server.
                        _ = try? channel.syncOptions?.setOption(.socketOption(.tcp_nodelay), value: 1)
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                            wrappingChannelSynchronously: channel)
                    }
                }.recover { _ in nil }
            }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await server.executeThenClose { inbound in
                        try await withThrowingDiscardingTaskGroup { connections in
                            defer {
                                connections.cancelAll()
                                for connection in unclaimed.close() {
                                    connections.addTask { try? await connection.executeThenClose { _, _ in } }
                                }
                            }
                            for try await connection in inbound {
                                guard let connection else { continue }
                                unclaimed.claim(connection.channel)
                                onConnection(1)
                                connections.addTask {
                                    await serveConnection(connection, handler)
                                    onConnection(-1)
                                }
                            }
                        }
                    }
                } onCancel: {
                    server.channel.close(promise: nil)
                }
            }
            try await onBound(server.channel.localAddress?.port ?? port)
        }
    }

    private static func serveConnection(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
                                         _ handler: Handler) async {
        let remoteIP = connection.channel.remoteAddress?.ipAddress ?? "unknown"
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                    body = []
                case .body(let buffer):
                    guard body.count + buffer.readableBytes <= maxBodyBytes else { return }
                    body.append(contentsOf: buffer.readableBytesView)
                case .end:
                    guard let requestHead = head else { return }
                    let request = ServerRequest(method: requestHead.method.rawValue, uri: requestHead.uri,
                                                headers: requestHead.headers, body: body, remoteIP: remoteIP,
                                                channel: connection.channel)
                    guard let response = await handler(request) else { return }
                    var headers = HTTPHeaders(response.headers)
                    headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
                    if !requestHead.isKeepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
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

/// Runs `server` (which reports its bound port through the callback it is given) in a child task, runs `body` with
/// that port, then cancels the server and returns `body`'s result. A server that fails before binding rethrows
/// its error here.
public func withBoundServer<T: Sendable>(
    of server: @escaping @Sendable (_ onBound: @escaping @Sendable (Int) async throws -> Void) async throws -> Void,
    _ body: @Sendable (Int) async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: Void.self) { group in
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        group.addTask {
            defer { continuation.finish() }
            try await server { continuation.yield($0) }
        }
        defer { group.cancelAll() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else {
            try await group.next()
            throw CancellationError()
        }
        return try await body(port)
    }
}
