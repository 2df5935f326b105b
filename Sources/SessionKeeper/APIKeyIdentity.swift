import ConfigFile
import Foundation

/// One entry of `api_keys:` — an identity this daemon keeps a session for with a bunq API key.
public struct APIKeyIdentity: ConfigSection, Equatable {
    public let name: String
    /// The API key. Secret.
    public let key: String

    public init(name: String, key: String) {
        self.name = name
        self.key = key
    }

    public static let configKeys: [ConfigKeys] = [.shaped("api_keys")]

    /// Every `{name, key_file | key_credential}` of `api_keys`, in the file's order.
    public static func readAll(from config: ConfigReader) throws(ConfigurationError) -> [APIKeyIdentity] {
        guard let node = config.node(["api_keys"]), !node.isNull else { return [] }
        guard let items = node.list else { throw config.fail("api_keys", "must be a list of {name, key_file}") }
        var identities: [APIKeyIdentity] = []
        for item in items {
            let key = item.key
            guard let entries = item.entries else { throw config.fail(key, "must be a mapping {name, key_file}") }
            for (field, _) in entries where !["name", "key_file", "key_credential"].contains(field) {
                throw config.fail("\(key).\(field)", "is not a known key (name, key_file, key_credential)")
            }
            guard let name = item["name"]?.scalar, isValidName(name) else {
                throw config.fail("\(key).name", "must be 1-64 characters of a-z, 0-9, '-', '_' or '.', not 'provider' or user-*")
            }
            guard !identities.contains(where: { $0.name == name }) else { throw config.fail("\(key).name", "'\(name)' is used twice") }
            let secret: String
            if let credential = item["key_credential"]?.scalar {
                guard let credentials = config.credentialsDirectory else {
                    throw config.fail("\(key).key_credential", "needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
                }
                secret = try config.readSecret("\(key).key_credential", path: credentials + "/" + credential)
            } else if let file = item["key_file"]?.scalar {
                secret = try config.readSecret("\(key).key_file", path: file)
            } else {
                throw config.fail(key, "needs key_file or key_credential")
            }
            let trimmed = secret.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !trimmed.isEmpty, !trimmed.contains(where: \.isWhitespace) else {
                throw config.fail(key, "the API key is empty or contains spaces")
            }
            identities.append(APIKeyIdentity(name: name, key: trimmed))
        }
        return identities
    }

    /// A context name an operator may choose: not the provider's, not an OAuth user's (`user-*`).
    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name != "provider" && !name.hasPrefix("user-")
            && name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || "-_.".contains($0) }
    }
}
