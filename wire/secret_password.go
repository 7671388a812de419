package wire

// PlainPassword returns the password of a plain-text secret, which the
// proxy can use to log in to the server as the same user.
func (s Secret) PlainPassword() (string, bool) {
	if s.kind == SecretPlain {
		return s.text, true
	}
	return "", false
}
