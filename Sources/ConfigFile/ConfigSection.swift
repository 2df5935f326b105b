/// A part of the configuration file that one type reads: the type lives beside the code it configures
/// (`SocketSettings` in SessionServer, `ProxySettings` in BunqProxy, …), builds itself from a `ConfigReader` and
/// names the keys it reads, so that a key nobody reads is refused (a typo must not silently do nothing).
public protocol ConfigSection: Sendable {
    /// The top-level sections this type reads, with their keys.
    static var configKeys: [ConfigKeys] { get }
}

/// The keys of one top-level section.
public enum ConfigKeys: Sendable {
    /// A mapping whose keys are these (`socket: {path, max_connections, …}`).
    case mapping(String, Set<String>)
    /// A section whose shape its reader checks itself: a list (`api_keys`), a scalar (`device_description`), or a
    /// mapping of patterns (`access.contexts`).
    case shaped(String)

    public var section: String {
        switch self {
        case .mapping(let name, _), .shaped(let name): name
        }
    }
}
