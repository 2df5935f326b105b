import Foundation

/// An asynchronous HTTP/1.1 and HTTP/2 client over libcurl.
///
/// All transfers of one client share a connection pool and run on one dedicated thread, so hundreds of requests
/// can be in flight without occupying Swift concurrency's cooperative threads. TLS peer and host verification are
/// always on. Cancelling the calling task aborts its transfer.
public final class HTTPClient: Sendable {
    public struct Configuration: Sendable {
        /// Time allowed to establish a connection (TCP and TLS).
        public var connectTimeout: Duration = .seconds(10)
        /// Time allowed for a whole request, connection included.
        public var timeout: Duration = .seconds(30)
        /// A PEM file of CA certificates to trust instead of the system's bundle (a private CA, a proxy).
        public var caFile: String?
        /// Responses with a larger body fail with `responseTooLarge`, bounding memory against hostile peers.
        public var maxResponseBytes: Int = 16 << 20
        /// Idle connections kept for reuse.
        public var maxPooledConnections: Int = 64
        /// Simultaneous connections to one host; 0 means unlimited.
        public var maxConnectionsPerHost: Int = 0
        /// The local IP address outgoing connections leave from (one of this host's egress addresses); nil: the
        /// kernel's choice. bunq binds devices and rate limits to the caller's address.
        public var localAddress: String?

        public init(connectTimeout: Duration = .seconds(10), timeout: Duration = .seconds(30), caFile: String? = nil,
                    maxResponseBytes: Int = 16 << 20) {
            self.connectTimeout = connectTimeout
            self.timeout = timeout
            self.caFile = caFile
            self.maxResponseBytes = maxResponseBytes
        }
    }

    public let configuration: Configuration
    private let loop: CurlMultiLoop

    /// Creates a client and its transfer thread. Throws `invalidConfiguration` for an unreadable CA file.
    public init(configuration: Configuration = Configuration()) throws {
        if let caFile = configuration.caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw HTTPClientError(.invalidConfiguration, "the CA file \(caFile) is missing or unreadable",
                                  endpoint: "-")
        }
        self.configuration = configuration
        self.loop = try CurlMultiLoop(configuration: configuration)
    }

    deinit {
        loop.stop()
    }

    /// Sends `request` and returns the complete response, whatever its status.
    ///
    /// Throws `HTTPClientError` when no response arrived, and `CancellationError` when the task was cancelled
    /// (the transfer is aborted and its connection closed).
    public func execute(_ request: HTTPRequest) async throws -> HTTPResponse {
        let transfer = try CurlTransfer(request: request, configuration: configuration)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                transfer.attach(continuation)
                loop.submit(transfer)
            }
        } onCancel: {
            loop.cancel(transfer)
        }
    }

    /// Aborts every unfinished request with `shutdown` and stops the transfer thread.
    public func shutdown() async {
        await loop.shutdown()
    }
}
