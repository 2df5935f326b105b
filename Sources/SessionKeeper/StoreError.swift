/// A failure of the state store or its master key, naming the file and what went wrong.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case masterKey = "master_key"
        case permissions
        case database
        case corrupt
        /// Another daemon holds the state directory.
        case locked
        /// A write for a context that no longer exists (removed meanwhile): refused, never re-created.
        case missing
        /// A write under a lease this daemon no longer holds (another daemon took it over): refused.
        case fenced
        /// The store did not answer within `state.timeout`: the call was given up, not waited for.
        case timeout = "store_timeout"
    }

    public let code: Code
    public let message: String
    /// The underlying error's description (never secret material).
    public let cause: String?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause.map { "\($0)" }
    }

    public var description: String {
        cause.map { "\(message): \($0)" } ?? message
    }
}
