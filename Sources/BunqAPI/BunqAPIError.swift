import CurlHTTP

/// A failed bunq call, classified so callers know whether to retry, renew, stop, or alert.
public struct BunqAPIError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// Network failure, timeout, 5xx or 491 (maintenance): retry with backoff.
        case transient
        /// 429: bunq's rate limit; retry after backoff.
        case rateLimited = "rate_limited"
        /// 401, or 403 "Insufficient authentication/authorisation." (bunq uses either status with either
        /// wording): the session is gone; renew once.
        case sessionInvalid = "session_invalid"
        /// Any other 403 ("You're not allowed to make this call."): the session is alive but may not do this
        /// (another user's id, a permission the grant lacks). Renewing cannot help.
        case permissionDenied = "permission_denied"
        /// "User credentials are incorrect", a revoked grant, an invalid OAuth client: a human must act.
        case credentialsRejected = "credentials_rejected"
        /// 466: the call needs a signature.
        case signatureRequired = "signature_required"
        /// 400 "The request signature is invalid.".
        case signatureInvalid = "signature_invalid"
        /// The reply's `X-Bunq-Server-Signature` is missing or wrong: never trusted, never retried silently.
        case responseNotAuthentic = "response_not_authentic"
        /// TLS failed (untrusted certificate, wrong host): a configuration problem, not retried.
        case tls
        /// Any other 4xx: the request was wrong.
        case badRequest = "bad_request"
        /// The reply could not be understood.
        case protocolError = "protocol"
    }

    public let kind: Kind
    /// `METHOD path` of the call, without host or query.
    public let endpoint: String
    /// HTTP status, when a reply arrived.
    public let status: Int?
    /// bunq's `error_description` (or our account of what went wrong).
    public let message: String
    /// `X-Bunq-Client-Response-Id`, to quote to bunq support.
    public let responseId: String?
    /// The transport error underneath, for network failures.
    public let transportError: HTTPClientError?

    public init(_ kind: Kind, endpoint: String, status: Int? = nil, message: String, responseId: String? = nil,
                transportError: HTTPClientError? = nil) {
        self.kind = kind
        self.endpoint = endpoint
        self.status = status
        self.message = message
        self.responseId = responseId
        self.transportError = transportError
    }

    /// Whether retrying later (with backoff) can succeed without a human: network failures, 5xx, 491, 429, a
    /// dead session, a reply we could not read. A rejected credential or signature, a reply that fails
    /// verification, a TLS failure or any other 4xx comes back the same however often it is retried: each retry
    /// would only spend the session-server budget other identities need.
    public var isRetryable: Bool {
        [.transient, .rateLimited, .sessionInvalid, .protocolError].contains(kind)
    }

    public var description: String {
        var text = "\(endpoint): \(kind.rawValue)"
        if let status { text += " (HTTP \(status))" }
        text += ": \(message)"
        if let responseId { text += " [response id \(responseId)]" }
        return text
    }

    /// Classifies a reply that is not a success from its status and bunq's error text.
    static func classify(status: Int, message: String, endpoint: String, responseId: String?) -> BunqAPIError {
        let kind: Kind
        switch status {
        case 429: kind = .rateLimited
        case 466: kind = .signatureRequired
        case 491, 500...599: kind = .transient
        case 401 where message.contains("credentials are incorrect"), 403 where message.contains("credentials are incorrect"):
            kind = .credentialsRejected
        case 401: kind = .sessionInvalid
        case 403: kind = isDeadSessionText(message) ? .sessionInvalid : .permissionDenied
        case 400 where message.contains("User credentials are incorrect"): kind = .credentialsRejected
        case 400 where message.contains("request signature is invalid"): kind = .signatureInvalid
        default: kind = .badRequest
        }
        return BunqAPIError(kind, endpoint: endpoint, status: status, message: message, responseId: responseId)
    }

    /// bunq's words for a session that no longer exists: "Insufficient authentication." or "Insufficient
    /// authorisation." (either spelling of the latter), whatever the status.
    static func isDeadSessionText(_ message: String) -> Bool {
        let text = message.lowercased()
        return text.contains("insufficient authentication") || text.contains("insufficient authorisation")
            || text.contains("insufficient authorization")
    }

    static func transport(_ error: HTTPClientError, endpoint: String) -> BunqAPIError {
        BunqAPIError(error.kind == .tls ? .tls : (error.isTransient ? .transient : .protocolError),
                     endpoint: endpoint, message: error.message + (error.curlMessage.map { " (\($0))" } ?? ""),
                     transportError: error)
    }
}
