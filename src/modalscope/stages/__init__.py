"""The study's stages, one module each, in the order the method runs them.

pairs -> extract (loading, recording) -> analyze -> plot -> report, with export on request;
checks holds what every stage after the recording verifies of DIR, settings the study file
each stage keeps true, run the whole study. Each stage reads what the previous one wrote in
DIR (outputs.py catalogues it), so each also runs alone on an existing study folder.
"""
