/// The `client_public_key_signature` of bunq's `POST /v1/payment-service-provider-credential`: proof that the
/// holder of the eIDAS certificate's key vouches for this installation's key.
public enum PSD2RegistrationSignature {
    /// The exact bytes signed: the installation's public key as SubjectPublicKeyInfo PEM (ending in one newline)
    /// immediately followed by the installation token, with no newline after it.
    public static func message(clientPublicKey: RSAPublicKey, installationToken: String) throws -> [UInt8] {
        Array((try clientPublicKey.pem() + installationToken).utf8)
    }

    /// The base64 signature of `message(...)` made with the certificate's private key (not the installation key).
    public static func sign(clientPublicKey: RSAPublicKey, installationToken: String,
                            certificateKey: RSAPrivateKey) throws -> String {
        try certificateKey.base64Signature(for: message(clientPublicKey: clientPublicKey,
                                                        installationToken: installationToken))
    }
}
