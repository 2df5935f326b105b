import BunqCrypto
import Foundation

/// A bunq user the emulator knows: a sandbox person or company, or a PSD2 service provider.
struct SandboxUser: Sendable {
    enum Kind: String, Sendable {
        case person = "UserPerson"
        case company = "UserCompany"
        case serviceProvider = "UserPaymentServiceProvider"
    }

    let id: Int
    let kind: Kind
    let created: Date
    let displayName: String
    let publicUUID: String
    /// The user's one active `MonetaryAccountBank` (persons and companies).
    let accountId: Int?
    let iban: String?
    /// The subject DN of a service provider's certificate.
    let certificateDN: String?
}

/// What a secret (API key, PSD2 `token_value`, OAuth access token) stands for.
struct Credential: Sendable {
    enum Kind: Sendable {
        case apiKey(userId: Int)
        case psd2(userId: Int)
        /// An OAuth access token: sessions opened with it belong to the `UserApiKey` `apiKeyUserId`.
        case oauth(apiKeyUserId: Int)
    }

    let kind: Kind
    var revoked = false
    var sessionsStarted = 0
}

/// A `UserApiKey`: the identity of an OAuth grant, requested by a provider and granted by a user.
struct UserApiKey: Sendable {
    let id: Int
    let created: Date
    let requestingUserId: Int
    let grantingUserId: Int
}

struct Installation: Sendable {
    let id: Int
    let tokenId: Int
    let token: String
    let created: Date
    let clientPublicKey: RSAPublicKey
    /// The PEM exactly as the client sent it (for the PSD2 string-to-sign).
    let clientPublicKeyPEM: String
    let serverKeyIndex: Int
}

/// A secret registered as a device (`POST /v1/device-server`) on one installation: what session-server requires.
struct DeviceBinding: Sendable, Hashable {
    let installationId: Int
    let secret: String
}

struct Session: Sendable {
    let id: Int
    let tokenId: Int
    let token: String
    let installationId: Int
    /// The id of the session's user object (for an OAuth session: the `UserApiKey`).
    let userId: Int
    let created: Date
    let expiresAt: Date
    var ended = false

    func isLive(at now: Date) -> Bool { !ended && now < expiresAt }
}

struct OAuthCallback: Sendable {
    let id: Int
    let created: Date
    let url: String
}

struct OAuthClient: Sendable {
    let id: Int
    let userId: Int
    let created: Date
    var updated: Date
    var status: String
    let clientId: String
    let secret: String
    var callbacks: [OAuthCallback] = []
}

struct AuthorizationCode: Sendable {
    let clientId: String
    let redirectURI: String
    let state: String?
    let grantingUserId: Int
    let expiresAt: Date
    var used = false
}

/// Counters for `GET /_sandbox/stats`.
struct SandboxStats: Sendable {
    var installations = 0
    var deviceServers = 0
    var sessionsCreated = 0
    var rejectedSignatures = 0
    var rateLimited = 0
    var requests: [String: Int] = [:]
}
