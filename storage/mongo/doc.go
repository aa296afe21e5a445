// Package mongo is the pharox.Storage on MongoDB (see the package
// documentation's feature list below).
package mongo
