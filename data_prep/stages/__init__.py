"""The offline stages, one module each (`python -m data_prep STAGE` runs `<stage>.main`), and
`runner`, the resumable, parallel, cached loop they share."""
