"""External memories: LRUA (Santoro et al. 2016), NTM, DNC; each with equations, a literal reference, a fast sequence."""
