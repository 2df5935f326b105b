import ConfigFile

/// `metrics:` — where Prometheus scrapes `GET /metrics`; no `metrics.listen`, no metrics.
public struct MetricsSettings: ConfigSection, Equatable {
    /// `metrics.listen`: a TCP address (an IP literal and a port) or a Unix socket path.
    public enum Listen: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        public init?(_ text: String) {
            if text.hasPrefix("unix:") {
                let path = String(text.dropFirst(5))
                guard path.hasPrefix("/"), path.utf8.count < 108 else { return nil }
                self = .unix(path: path)
                return
            }
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port)
            else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard IPAddressText.isValid(host) else { return nil }
            self = .tcp(host: host, port: port)
        }

        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): "unix:\(path)"
            }
        }
    }

    public let listen: Listen

    public static let configKeys: [ConfigKeys] = [.mapping("metrics", ["listen"])]

    /// The metrics endpoint, when the file configures one.
    public static func read(from config: ConfigReader) throws(ConfigurationError) -> MetricsSettings? {
        guard let text = try config.string(["metrics", "listen"]) else { return nil }
        guard let listen = Listen(text) else {
            throw config.fail("metrics.listen", "must be HOST:PORT (an IP address; [v6]:PORT) or unix:/absolute/path, not '\(text)'")
        }
        return MetricsSettings(listen: listen)
    }
}
