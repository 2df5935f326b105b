/// A request that produced no HTTP response, classified so callers can decide between retrying, failing fast and
/// alerting. HTTP error statuses are not errors here: they arrive as `HTTPResponse`s.
public struct HTTPClientError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// The request itself is unusable: bad URL, scheme, method or header.
        case invalidRequest = "invalid_request"
        /// The client's configuration is unusable, e.g. an unreadable CA file.
        case invalidConfiguration = "invalid_configuration"
        /// The host name did not resolve.
        case dns
        /// The host actively refused the connection (nothing listens on the port).
        case connectionRefused = "connection_refused"
        /// The connection failed for another reason (unreachable network or host).
        case connectFailed = "connect_failed"
        /// No connection within the connect timeout.
        case connectTimeout = "connect_timeout"
        /// Connected, but the whole exchange did not finish within the total timeout.
        case timeout
        /// TLS failed: certificate not trusted, wrong host name, handshake failure.
        case tls
        /// The connection dropped before a complete response arrived.
        case connectionLost = "connection_lost"
        /// The peer did not speak valid HTTP.
        case protocolError = "protocol"
        /// The response body exceeded the configured maximum.
        case responseTooLarge = "response_too_large"
        /// The client was shut down.
        case shutdown
        /// libcurl failed in a way that points at a bug or resource exhaustion.
        case internalError = "internal"
    }

    public let kind: Kind
    /// What happened, naming the endpoint (never the query string).
    public let message: String
    /// `METHOD scheme://host:port/path`.
    public let endpoint: String
    /// libcurl's result code and its own error text, when libcurl reported the failure.
    public let curlCode: Int32?
    public let curlMessage: String?

    public init(_ kind: Kind, _ message: String, endpoint: String, curlCode: Int32? = nil, curlMessage: String? = nil) {
        self.kind = kind
        self.message = message
        self.endpoint = endpoint
        self.curlCode = curlCode
        self.curlMessage = curlMessage
    }

    /// Whether trying again later can succeed without anyone changing anything.
    public var isTransient: Bool {
        switch kind {
        case .dns, .connectionRefused, .connectFailed, .connectTimeout, .timeout, .connectionLost, .protocolError:
            true
        case .invalidRequest, .invalidConfiguration, .tls, .responseTooLarge, .shutdown, .internalError:
            false
        }
    }

    public var description: String {
        var text = "\(endpoint): \(message) (\(kind.rawValue)"
        if let curlCode { text += ", curl \(curlCode)" }
        if let curlMessage, !curlMessage.isEmpty { text += ": \(curlMessage)" }
        return text + ")"
    }
}
