import ConfigFile
import Foundation

/// `provider:` — the PSD2 provider's eIDAS certificate and key, and the redirect URIs its OAuth users return to.
public struct ProviderSettings: ConfigSection, Equatable {
    public let certificatePath: String
    public let certificatePEM: String
    /// Where the private key came from: a file path or `credential eidas-key`.
    public let privateKeySource: String
    /// Secret.
    public let privateKeyPEM: String
    public let chainPath: String?
    public let chainPEM: String?
    public let oauthRedirectURIs: [String]

    public static let configKeys: [ConfigKeys] = [
        .mapping("provider", ["certificate", "private_key", "certificate_chain", "oauth_redirect_uris"]),
    ]

    /// The provider, when the file (or the environment) configures one.
    public static func read(from config: ConfigReader) throws(ConfigurationError) -> ProviderSettings? {
        guard config.node(["provider"]).map({ !$0.isNull }) == true || config.isGiven(["provider", "certificate"]) else {
            return nil
        }
        return try ProviderSettings(reading: config)
    }

    init(reading config: ConfigReader) throws(ConfigurationError) {
        guard let certificate = try config.string(["provider", "certificate"]) else {
            throw config.fail("provider.certificate", "is required when a provider is configured")
        }
        certificatePath = certificate
        certificatePEM = try config.readSecret("provider.certificate", path: certificate)
        let credentialKey = config.credentialsDirectory.map { $0 + "/eidas-key" }
        if let credentialKey, FileManager.default.fileExists(atPath: credentialKey) {
            (privateKeySource, privateKeyPEM) = ("credential eidas-key", try config.readSecret("provider.private_key", path: credentialKey))
        } else if let path = try config.string(["provider", "private_key"]) {
            (privateKeySource, privateKeyPEM) = (path, try config.readSecret("provider.private_key", path: path))
        } else {
            throw config.fail("provider.private_key", "is required (or the systemd credential eidas-key)")
        }
        chainPath = try config.string(["provider", "certificate_chain"])
        chainPEM = try chainPath.map { path throws(ConfigurationError) in
            try config.readSecret("provider.certificate_chain", path: path)
        }
        oauthRedirectURIs = try config.strings(["provider", "oauth_redirect_uris"])
        for uri in oauthRedirectURIs {
            guard let components = URLComponents(string: uri), components.scheme != nil, components.host != nil else {
                throw config.fail("provider.oauth_redirect_uris", "'\(uri)' is not an absolute URL")
            }
        }
    }
}
