import ConfigFile
import SessionServer

/// `proxy:` — the bunq API proxy's socket and its bounds; no section, no proxy.
public struct ProxySettings: ConfigSection, Equatable {
    /// The Unix socket applications send their bunq requests to (`proxy.socket`, mode 0660).
    public let socket: String
    /// `proxy.max_connections`, `max_connections_per_uid`, `max_body_bytes`, `timeout`, `idle_timeout`; the send
    /// timeout is the JSON-RPC socket's (`socket.send_timeout`).
    public let limits: ProxyServer.Limits

    public static let configKeys: [ConfigKeys] = [
        .mapping("proxy", ["socket", "max_body_bytes", "timeout", "max_connections", "max_connections_per_uid", "idle_timeout"]),
    ]

    /// The proxy, when the file configures one; its socket must not be the JSON-RPC socket.
    public static func read(from config: ConfigReader, socket: SocketSettings) throws(ConfigurationError) -> ProxySettings? {
        guard let path = try config.string(["proxy", "socket"]) else {
            if let section = config.node(["proxy"]), !section.isNull {
                throw config.fail("proxy.socket", "is required when a proxy section is given (absent: no proxy)")
            }
            return nil
        }
        guard path.hasPrefix("/"), path.utf8.count < 108 else {
            throw config.fail("proxy.socket", "must be an absolute path shorter than 108 bytes")
        }
        guard path != socket.path else { throw config.fail("proxy.socket", "must not be socket.path") }
        var limits = ProxyServer.Limits()
        limits.maxBodyBytes = try config.int(["proxy", "max_body_bytes"], default: 1 << 20, range: 1...(64 << 20))
        limits.timeout = .seconds(try config.int(["proxy", "timeout"], default: 30, range: 1...600))
        limits.maxConnections = try config.int(["proxy", "max_connections"], default: 1_024, range: 1...1_000_000)
        limits.maxConnectionsPerUID = try config.int(["proxy", "max_connections_per_uid"], default: 64, range: 1...1_000_000)
        limits.idleTimeout = .seconds(try config.int(["proxy", "idle_timeout"], default: 60, range: 1...86_400))
        limits.sendTimeout = socket.limits.sendTimeout
        return ProxySettings(socket: path, limits: limits)
    }

    init(socket: String, limits: ProxyServer.Limits) {
        self.socket = socket
        self.limits = limits
    }
}
