import BunqCrypto
import Foundation

/// A PSD2 provider's eIDAS certificate, its chain and its private key, checked locally before any call to bunq.
public struct PSD2Material: Sendable {
    public let certificate: Certificate
    public let chain: [Certificate]
    public let privateKey: RSAPrivateKey
    /// Notes for the operator that do not stop registration (a certificate expiring within 30 days).
    public let warnings: [String]

    /// Reads and checks the material: the key belongs to the certificate, the CN names AISP and/or PISP, the
    /// certificate is valid at `now`. Errors name the file at fault. Without a chain, the leaf stands in for it
    /// (bunq's sandbox accepts that).
    public init(certificatePEM: String, certificatePath: String, privateKeyPEM: String, privateKeyPath: String,
                chainPEM: String? = nil, chainPath: String? = nil, now: Date = Date()) throws(PSD2MaterialError) {
        let certificate: Certificate
        do {
            certificate = try Certificate(pem: certificatePEM)
        } catch {
            throw PSD2MaterialError(file: certificatePath, reason: "is not a readable PEM certificate: \(error)")
        }
        let privateKey: RSAPrivateKey
        do {
            privateKey = try RSAPrivateKey(pem: privateKeyPEM)
        } catch {
            throw PSD2MaterialError(file: privateKeyPath, reason: "is not a usable RSA private key: \(error)")
        }
        guard certificate.isMatched(by: privateKey) else {
            throw PSD2MaterialError(file: privateKeyPath,
                                    reason: "does not belong to the certificate \(certificatePath) (\(certificate.subject))")
        }
        let roles = certificate.psd2Roles
        guard roles.contains(.aisp) || roles.contains(.pisp) else {
            throw PSD2MaterialError(file: certificatePath, reason: "has the common name '\(certificate.commonName ?? "")', "
                + "which names neither AISP nor PISP; bunq registers PSD2 providers by those roles")
        }
        guard certificate.notBefore <= now else {
            throw PSD2MaterialError(file: certificatePath, reason: "is not valid before \(certificate.notBefore)")
        }
        guard now <= certificate.notAfter else {
            throw PSD2MaterialError(file: certificatePath, reason: "expired on \(certificate.notAfter)")
        }
        var chain = [certificate]
        if let chainPEM {
            do {
                chain = try Certificate.chain(pem: chainPEM)
            } catch {
                throw PSD2MaterialError(file: chainPath ?? "certificate chain", reason: "is not a PEM chain: \(error)")
            }
        }
        var warnings: [String] = []
        let daysLeft = Int(certificate.notAfter.timeIntervalSince(now) / 86_400)
        if daysLeft < 30 {
            warnings.append("\(certificatePath) expires in \(daysLeft) days (\(certificate.notAfter)); renew it")
        }
        self.certificate = certificate
        self.chain = chain
        self.privateKey = privateKey
        self.warnings = warnings
    }
}

/// PSD2 material refused locally, naming the file.
public struct PSD2MaterialError: Error, Sendable, CustomStringConvertible {
    public let file: String
    public let reason: String
    public var description: String { "\(file) \(reason)" }
}
