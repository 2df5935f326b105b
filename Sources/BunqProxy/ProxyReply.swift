import Foundation
import NIOCore
import NIOHTTP1
import SessionProtocol

/// What the proxy sends back for one request: bunq's answer passed through, or one of its own errors.
struct ProxyReply: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: ByteBuffer
    /// The proxy's own error code (`X-Bunq-Sessiond-Error`), nil when bunq answered.
    var errorCode: ProxyErrorCode?
    /// How long the request waited for its rate-limit slot.
    var waited: Duration = .zero
}

/// The proxy's own answers, with their HTTP status: bunq's error shape and `X-Bunq-Sessiond-Error: CODE`, so a
/// caller's existing bunq error handling reads them and a caller that cares can tell them from bunq's.
enum ProxyErrorCode: String, Sendable {
    case missingContext = "missing_context"
    /// Unknown and forbidden alike: names cannot be probed.
    case unknownContext = "unknown_context"
    case bodyTooLarge = "body_too_large"
    case sessionUnavailable = "session_unavailable"
    case rateLimitWait = "rate_limit_wait"
    case responseNotAuthentic = "response_not_authentic"
    case upstreamUnreachable = "upstream_unreachable"
    case upstreamTimeout = "upstream_timeout"
    /// The path is not bunq's (`/v1/` and plain segments).
    case invalidPath = "invalid_path"
    /// Not one of bunq's methods (GET, POST, PUT, DELETE).
    case methodNotAllowed = "method_not_allowed"
    /// Calls that would spend the daemon's session-server budget or end or replace its sessions and devices.
    case endpointNotProxied = "endpoint_not_proxied"
    /// The request's header section is larger than the proxy reads.
    case headerTooLarge = "header_too_large"
    /// Not HTTP/1.1 the proxy can parse.
    case badRequest = "bad_request"
    /// Over `proxy.max_connections` or `proxy.max_connections_per_uid`.
    case tooManyConnections = "too_many_connections"

    var status: Int {
        switch self {
        case .missingContext, .invalidPath, .badRequest: 400
        case .unknownContext, .endpointNotProxied: 403
        case .methodNotAllowed: 405
        case .bodyTooLarge: 413
        case .headerTooLarge: 431
        case .sessionUnavailable, .rateLimitWait, .tooManyConnections: 503
        case .responseNotAuthentic, .upstreamUnreachable: 502
        case .upstreamTimeout: 504
        }
    }
}

extension ProxyReply {
    /// One of the proxy's own errors. `retryAfter` (seconds, rounded up, at least 1) becomes `Retry-After`.
    static func error(_ code: ProxyErrorCode, _ message: String, retryAfter: Duration? = nil) -> ProxyReply {
        var headers = [("Content-Type", "application/json"), ("X-Bunq-Sessiond-Error", code.rawValue)]
        if let retryAfter {
            let seconds = max(1, Int((Double(retryAfter.components.seconds) + Double(retryAfter.components.attoseconds) / 1e18).rounded(.up)))
            headers.append(("Retry-After", "\(seconds)"))
        }
        let description = JSONText.quote(message)
        let text = "{\"Error\":[{\"error_description\":\(description),\"error_description_translated\":\(description)}]}"
        return ProxyReply(status: code.status, headers: headers, body: ByteBuffer(string: text), errorCode: code)
    }

    /// The response head, with `Content-Length` and, when the connection ends after it, `Connection: close`.
    func head(version: HTTPVersion, keepAlive: Bool) -> HTTPResponseHead {
        var fields = HTTPHeaders(headers)
        fields.replaceOrAdd(name: "Content-Length", value: "\(body.readableBytes)")
        if !keepAlive { fields.replaceOrAdd(name: "Connection", value: "close") }
        return HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: status), headers: fields)
    }
}
