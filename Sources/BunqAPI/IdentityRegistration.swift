import BunqCrypto
import Foundation

/// Everything durable about one identity's registration with bunq, filled in step by step. Persist it after every
/// step: a restart resumes at `nextStep` and never redoes a finished one.
///
/// Holds secrets (`installationKeyPEM`, `installationToken`, `secret`): store it encrypted.
public struct IdentityRegistration: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// A plain API key (`secret` given up front).
        case apiKey = "api_key"
        /// The PSD2 provider (`secret` is the `token_value` the registration returns).
        case psd2Provider = "psd2_provider"
        /// An OAuth-connected user (`secret` is the access token).
        case oauthUser = "oauth_user"
    }

    public let kind: Kind
    /// The installation's private key, PKCS#8 PEM: generated once, before installation.
    public var installationKeyPEM: String?
    public var installationId: Int?
    public var installationToken: String?
    public var serverPublicKeyPEM: String?
    /// API key, PSD2 `token_value` or OAuth access token: the device-server and session-server secret.
    public var secret: String?
    /// Set (and persisted) before device-server is called, so a crash during that call is resolved by checking,
    /// not by registering a second device.
    public var deviceRegistrationStarted = false
    public var deviceId: Int?
    /// Whether the device is known to be bound (registered, or proven by a successful session).
    public var deviceBound = false
    /// Sessions opened so far (a PSD2 provider's first session is short).
    public var sessionsOpened = 0

    public init(kind: Kind, secret: String? = nil) {
        self.kind = kind
        self.secret = secret
    }

    /// What `BunqClient.advance` does next.
    public var nextStep: BootstrapStep {
        if installationKeyPEM == nil { return .generateKey }
        if installationToken == nil || serverPublicKeyPEM == nil { return .installation }
        if secret == nil { return kind == .psd2Provider ? .psd2Credential : .missingSecret }
        if !deviceBound { return deviceRegistrationStarted ? .confirmDevice : .deviceServer }
        return .session
    }

    /// The installation's signing context, once installed.
    public func installationContext() throws -> InstallationContext {
        guard let installationKeyPEM, let installationToken, let serverPublicKeyPEM else {
            throw BunqAPIError(.badRequest, endpoint: "installation", message: "the identity is not installed yet")
        }
        return InstallationContext(key: try RSAPrivateKey(pem: installationKeyPEM), token: installationToken,
                                   serverKey: try RSAPublicKey(pem: serverPublicKeyPEM))
    }
}

/// One step of an identity's bootstrap, in order.
public enum BootstrapStep: String, Sendable, Equatable {
    /// Generate the installation key (local).
    case generateKey = "generate_key"
    /// `POST installation`.
    case installation
    /// `POST payment-service-provider-credential` (PSD2 provider only).
    case psd2Credential = "psd2_credential"
    /// `POST device-server`.
    case deviceServer = "device_server"
    /// A device-server call was interrupted: a session-server call shows whether it bound the device.
    case confirmDevice = "confirm_device"
    /// `POST session-server`: bootstrapped; every further session (renewal) is this step again.
    case session
    /// An API-key or OAuth identity without its secret: nothing can proceed.
    case missingSecret = "missing_secret"
}

extension BunqClient {
    /// Performs `registration.nextStep` and records its durable result in `registration`. Returns the new session
    /// when the step opened one (`session`, or `confirmDevice` when the device was bound).
    ///
    /// Persist `registration` after every call, including failed ones. `persist` is also called inside the
    /// device-server step, with `deviceRegistrationStarted` set, before the request goes out: a crash during
    /// that call then resumes with `confirmDevice`, never a second device. `psd2` is required for a PSD2
    /// provider's `psd2Credential` step.
    public func advance(_ registration: inout IdentityRegistration, deviceDescription: String,
                        psd2: PSD2Material? = nil,
                        persist: (IdentityRegistration) async throws -> Void = { _ in }) async throws -> BunqSession? {
        switch registration.nextStep {
        case .generateKey:
            registration.installationKeyPEM = try await RSAPrivateKey.generate().pkcs8PEM()
            return nil
        case .installation:
            let key = try RSAPrivateKey(pem: registration.installationKeyPEM ?? "")
            let installation = try await createInstallation(key: key)
            registration.installationId = installation.id
            registration.installationToken = installation.token
            registration.serverPublicKeyPEM = installation.serverPublicKeyPEM
            return nil
        case .psd2Credential:
            guard let psd2 else {
                throw BunqAPIError(.badRequest, endpoint: "POST payment-service-provider-credential",
                                   message: "the PSD2 certificate and key are needed to register the provider")
            }
            registration.secret = try await registerPSD2Credential(
                try registration.installationContext(), certificate: psd2.certificate, chain: psd2.chain,
                certificateKey: psd2.privateKey)
            return nil
        case .deviceServer:
            registration.deviceRegistrationStarted = true
            try await persist(registration)
            registration.deviceId = try await registerDevice(try registration.installationContext(),
                                                             description: deviceDescription,
                                                             secret: registration.secret ?? "")
            registration.deviceBound = true
            return nil
        case .confirmDevice:
            do {
                let session = try await openSession(&registration)
                registration.deviceBound = true
                return session
            } catch let error as BunqAPIError where error.kind == .credentialsRejected {
                // The interrupted call never bound the device: register it now.
                registration.deviceRegistrationStarted = false
                return nil
            }
        case .session:
            return try await openSession(&registration)
        case .missingSecret:
            throw BunqAPIError(.credentialsRejected, endpoint: "device-server",
                               message: "the identity has no API key or access token to register")
        }
    }

    /// Runs `advance` until a session is open, calling `persist` after every step.
    public func bootstrap(_ registration: inout IdentityRegistration, deviceDescription: String,
                          psd2: PSD2Material? = nil,
                          persist: (IdentityRegistration) async throws -> Void) async throws -> BunqSession {
        while true {
            do {
                let session = try await advance(&registration, deviceDescription: deviceDescription, psd2: psd2,
                                                persist: persist)
                try await persist(registration)
                if let session { return session }
            } catch {
                try await persist(registration)
                throw error
            }
        }
    }

    /// A new session for a bootstrapped identity (also how sessions are renewed).
    public func openSession(_ registration: inout IdentityRegistration) async throws -> BunqSession {
        let session = try await createSession(
            try registration.installationContext(), secret: registration.secret ?? "",
            isFirstPSD2Session: registration.kind == .psd2Provider && registration.sessionsOpened == 0)
        registration.sessionsOpened += 1
        return session
    }
}
