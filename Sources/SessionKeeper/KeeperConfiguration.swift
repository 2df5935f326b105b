import BunqAPI
import ConfigFile
import Foundation

/// What the keeper reads from the configuration file (`/etc/bunq-sessiond/bunq-sessiond.yaml`, every key
/// documented in `config/bunq-sessiond.yaml`): one type per section, each validated as it is built. The socket's,
/// the proxy's, the metrics' and the access rules' sections belong to their own modules; the daemon reads them all
/// together (`DaemonConfiguration`).
public struct KeeperConfiguration: Sendable {
    public let file: String
    public let bunq: BunqSettings
    public let state: StateSettings
    /// This daemon's place in the cluster of daemons on the store (`cluster:`); with PostgreSQL only.
    public let cluster: ClusterSettings?
    public let provider: ProviderSettings?
    public let apiKeys: [APIKeyIdentity]
    public let renewal: RenewalSettings
    public let deviceDescription: String

    /// The sections the keeper reads.
    public static let configKeys: [ConfigKeys] = BunqSettings.configKeys + StateSettings.configKeys
        + ClusterSettings.configKeys + ProviderSettings.configKeys + APIKeyIdentity.configKeys
        + RenewalSettings.configKeys + [.shaped("device_description")]

    public init(reading config: ConfigReader) throws(ConfigurationError) {
        file = config.file
        bunq = try BunqSettings(reading: config)
        state = try StateSettings(reading: config)
        cluster = try ClusterSettings.read(from: config, backend: state.backend)
        provider = try ProviderSettings.read(from: config)
        apiKeys = try APIKeyIdentity.readAll(from: config)
        renewal = try RenewalSettings(reading: config)
        deviceDescription = try config.string(["device_description"]) ?? "bunq-sessiond"
    }

    /// Reads a file that holds the keeper's sections only (the daemon reads its whole file with
    /// `DaemonConfiguration`): for tools and tests that run a keeper by itself.
    public static func load(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> KeeperConfiguration {
        let config = try ConfigReader.load(file: file, environment: environment)
        try config.checkKeys(configKeys)
        return try KeeperConfiguration(reading: config)
    }

    public var sessionServerBudget: SessionServerBudget {
        bunq.rateLimits == .unlimited ? .unlimited : SessionServerBudget(scale: bunq.rateLimitScale, renewFraction: renewal.policy.renewFraction)
    }
}
