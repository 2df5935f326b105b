import BunqProxy
import ConfigFile
import Foundation
import MetricsEndpoint
import SessionKeeper
import SessionServer

/// The daemon's whole configuration file, read and validated at once: every section by the type that lives
/// beside its code. A start and a reload both read it in full before anything is applied, so a bad key anywhere
/// (exit 78 at start, naming it) leaves the running configuration untouched.
public struct DaemonConfiguration: Sendable {
    public let keeper: KeeperConfiguration
    public let socket: SocketSettings
    /// Nil: no proxy.
    public let proxy: ProxySettings?
    /// Nil: no metrics endpoint.
    public let metrics: MetricsSettings?
    public let access: AccessRules

    public static let configKeys: [ConfigKeys] = KeeperConfiguration.configKeys + SocketSettings.configKeys
        + ProxySettings.configKeys + MetricsSettings.configKeys + AccessRules.configKeys

    public static func load(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> DaemonConfiguration {
        let config = try ConfigReader.load(file: file, environment: environment)
        try config.checkKeys(configKeys)
        let keeper = try KeeperConfiguration(reading: config)
        let socket = try SocketSettings(reading: config)
        return DaemonConfiguration(keeper: keeper, socket: socket,
                                   proxy: try ProxySettings.read(from: config, socket: socket),
                                   metrics: try MetricsSettings.read(from: config),
                                   access: try AccessRules(reading: config))
    }
}

extension DaemonConfiguration {
    /// What a reload cannot apply, as the keys an operator changed: the API-key identities, the renewal policy,
    /// `renewal.min_manual_interval` and the access rules are applied at once; everything else takes effect at the
    /// next start. Empty when nothing else changed.
    public func changesNeedingRestart(since old: DaemonConfiguration) -> [String] {
        var changed: [String] = []
        if keeper.bunq != old.keeper.bunq { changed.append("bunq") }
        if keeper.state != old.keeper.state { changed.append("state") }
        if keeper.cluster != old.keeper.cluster { changed.append("cluster") }
        if keeper.provider != old.keeper.provider { changed.append("provider") }
        if keeper.renewal.maxConcurrent != old.keeper.renewal.maxConcurrent { changed.append("renewal.max_concurrent") }
        if keeper.deviceDescription != old.keeper.deviceDescription { changed.append("device_description") }
        if socket != old.socket { changed.append("socket") }
        if proxy != old.proxy { changed.append("proxy") }
        if metrics != old.metrics { changed.append("metrics") }
        return changed
    }
}
