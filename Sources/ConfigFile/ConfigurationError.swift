/// A configuration problem: the file, the key and the reason. The daemon exits 78 (EX_CONFIG) with it.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let file: String
    public let key: String
    public let reason: String

    public init(file: String, key: String, reason: String) {
        self.file = file
        self.key = key
        self.reason = reason
    }

    public var description: String { "\(file): \(key): \(reason)" }
}
