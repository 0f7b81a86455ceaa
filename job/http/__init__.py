"""Plain HTTP(S) shared by the http, archive and Hub sources: proxies."""
