/// A failed request to the keeper's API, with a stable code for the socket protocol's errors.
public struct KeeperError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case unknownContext = "unknown_context"
        case noProvider = "no_provider"
        case providerNotLive = "provider_not_live"
        case invalidRedirectURI = "invalid_redirect_uri"
        /// An OAuth `state` that is unknown, used or older than 10 minutes.
        case invalidOAuthState = "invalid_oauth_state"
        /// A `session.report_invalid` for a generation that was never handed out.
        case invalidGeneration = "invalid_generation"
        /// The context needs a human (the message is the stable reason code).
        case needsAttention = "needs_attention"
        case upstream
        case store
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
